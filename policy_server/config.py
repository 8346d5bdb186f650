"""The configuration: one TOML file validated into frozen, typed objects.

Every default lives here; ``conf/policy-server.toml`` documents each key. Errors name the key path
(``server.listen``, ``channels[0].url``) so that ``check-config`` can point at the line to fix.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import string
import tomllib
import typing
import urllib.parse
import warnings
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .model import Reason


class ConfigError(Exception):
    """A config file that cannot be used; ``errors`` holds (key path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors))


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _PathKey:
    """Marks a key that names a file or a directory (``program``: a command line whose first
    word does, when it has a directory in it). :func:`resolve_paths` makes such a value absolute:
    relative to the config file's directory, or to the current directory for the embedded
    defaults."""

    def __init__(self, *, program: bool = False) -> None:
        self.program = program


_FILE = _PathKey()
_PROGRAM = _PathKey(program=True)
#: a key naming a file or a directory
FilePath = Annotated[str, _FILE]


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port.

    The host must be an IPv4 address, an IPv6 address in brackets or a host name; whether a
    name resolves is for ``check-config`` to find out, not for reading the file.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ValueError("must be host:port, e.g. 127.0.0.1:4001 or [::1]:4001")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError("port must be between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
        return host, port
    if ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets, as in [{host}]:{port}")
    labels = host.removesuffix(".").split(".")
    if labels[-1].isdigit():
        # no top-level domain is all digits: this is meant as an IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{host} is not an IPv4 address (four numbers 0-255, e.g. 127.0.0.1)"
            ) from None
        return host, port
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host, port


class ServerConfig(_Model):
    listen: str = "127.0.0.1:4001"
    api_header: str = ""
    basic_auth: str = ""
    max_body_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    request_budget_ms: int = Field(default=500, ge=10, le=1900)
    access_log: bool = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("basic_auth")
    @classmethod
    def _check_basic(cls, value: str) -> str:
        if value and ":" not in value:
            raise ValueError('must be "user:password", as in the user info of Dovecot\'s URL')
        return value

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class GeoipConfig(_Model):
    country_db: FilePath = ""
    asn_db: FilePath = ""
    asn_names: FilePath = ""
    bundled: bool = True
    ipv4_prefix: int = Field(default=24, ge=8, le=32)
    ipv6_prefix: int = Field(default=48, ge=16, le=128)


# "schema" is the natural key name in the file; pydantic warns that it shadows the deprecated
# BaseModel.schema() method, which this model never uses.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class StorageConfig(_Model):
        backend: Literal["sqlite", "postgres"] = "sqlite"
        path: FilePath = "var/policy-server.sqlite3"
        group_commit_wait_ms: float = Field(default=2.0, ge=0, le=100)
        group_commit_max_batch: int = Field(default=256, ge=1, le=10_000)
        # reports waiting for their write (read or commit) at most: more are answered status 0
        max_pending_writes: int = Field(default=10_000, ge=1, le=1_000_000)
        busy_timeout_ms: int = Field(default=5000, ge=0, le=60_000)
        synchronous: Literal["normal", "full"] = "normal"
        # PostgreSQL: the connection string, the schema holding the tables, the pool's size
        dsn: str = Field(default="", validate_default=True)
        schema: str = Field(  # type: ignore[assignment]
            default="public", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
        )
        pool_size: int = Field(default=10, ge=1, le=1000)
        # a statement (and a round trip) that takes longer fails; its connection is replaced
        command_timeout_s: float = Field(default=10.0, gt=0, le=600)
        # an account keeps at most this many prefixes per provider and country: a new one
        # replaces the least recently seen, which it inherits (first use, logins, programs), so
        # the rows a login reads do not grow with a carrier's address pools
        origins_per_provider: int = Field(default=4, ge=1, le=1000)
        # accounts whose known origins the service keeps in memory, to answer a fresh repeat
        # login (most logins) without reading the store; 0: read the store for every login
        history_cache: int = Field(default=50_000, ge=0, le=10_000_000)

        @field_validator("dsn")
        @classmethod
        def _check_dsn(cls, value: str, info: ValidationInfo) -> str:
            if info.data.get("backend") == "postgres" and not value.strip():
                raise ValueError(
                    'required when backend is "postgres",'
                    ' e.g. "postgresql://policy@db.example.org/policy"'
                )
            return value


class AccountsConfig(_Model):
    nfc: bool = True
    casefold: bool = True
    strip: bool = True
    # accounts whose logins are recorded but never make a notice (service accounts): glob
    # patterns ("noreply@*", "svc-*") matched against the account key
    exempt: tuple[str, ...] = ()

    @field_validator("exempt")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("an exempt pattern must not be empty")
        return value


NETWORK_CATEGORIES = ("trusted", "vpn", "hosting", "mail-app", "corporate")


class PolicyConfig(_Model):
    notify: tuple[Reason, ...] = (
        Reason.FIRST_USE,
        Reason.NEW_COUNTRY,
        Reason.NEW_PROVIDER,
        Reason.VIA_VPN,
        Reason.VIA_HOSTING,
        Reason.NEW_CLIENT,
        Reason.IMPOSSIBLE_TRAVEL,
        Reason.MANY_ORIGINS,
    )
    # new_client alone (a new mail program from a new network of a known provider) makes no
    # notice unless this is true; with another reason it makes the notice more pressing
    new_client_alone: bool = False
    # two logins further apart (km, less both accuracy radii) than this speed allows in the
    # time between them are impossible_travel; needs a City database; 0 = off
    max_speed_kmh: float = Field(default=800.0, ge=0)
    touch_granularity_s: int = Field(default=3600, ge=0)
    # new origins are learned silently while the account is younger than learning_days (since
    # its first recorded login) or has fewer than learning_logins recorded logins; 0 = off
    learning_days: float = Field(default=0.0, ge=0)
    learning_logins: int = Field(default=0, ge=0)
    # an origin the account has not used for this long, while it kept logging in from others,
    # no longer counts as known; it is deleted after purge_after_days
    forget_after_days: float = Field(default=180.0, gt=0)
    purge_after_days: float = Field(default=365.0, gt=0)
    # providers with the same AS organisation name in the data are one provider
    same_org_same_provider: bool = True
    # ASNs that belong together (a carrier's several networks): [[64500, 64501], [64510, 64511]]
    provider_groups: tuple[tuple[int, ...], ...] = ()

    @model_validator(mode="after")
    def _check_ages(self) -> PolicyConfig:
        if self.purge_after_days < self.forget_after_days:
            raise ValueError("purge_after_days must not be shorter than forget_after_days")
        seen: dict[int, int] = {}
        for index, group in enumerate(self.provider_groups):
            for asn in group:
                if asn in seen and seen[asn] != index:
                    raise ValueError(f"AS{asn} is in two provider_groups")
                seen[asn] = index
        return self


class CompromiseConfig(_Model):
    # successful logins of one account from at least this many distinct providers or countries
    # within window_s are many_origins (a hijacked account); 0 = off
    providers: int = Field(default=5, ge=0)
    window_s: float = Field(default=3600.0, gt=0)

    @field_validator("providers")
    @classmethod
    def _at_least_two(cls, value: int) -> int:
        if value == 1:
            raise ValueError(
                "one provider is every login: use 0 to turn the check off, or 2 or more"
            )
        return value


class NetworksConfig(_Model):
    # files of "<CIDR or AS number> <category> [label]" lines; reloaded on SIGHUP
    files: Annotated[tuple[str, ...], _FILE] = ()
    # the same lines written here
    entries: tuple[str, ...] = ()


class PrivacyConfig(_Model):
    # full client addresses in stored notices are cut to their prefix after this many days
    address_retention_days: float = Field(default=30.0, ge=0)
    # when set, every report is appended here as a JSON line (for replay); rotate it like a log
    events_path: FilePath = ""


class MessageConfig(_Model):
    language: str = "ja"
    timezone: str = "Asia/Tokyo"
    service_name: str = "Example Mail"
    help_url: str = "https://mail.example.jp/help/password"
    templates_dir: FilePath = ""

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


#: the shortest [web] secret accepted (an HMAC-SHA256 key)
MIN_SECRET_CHARS = 32


class WebConfig(_Model):
    """The owner's links in every notice ("It was me" / "It wasn't me") and their pages.

    Links exist only when ``public_url`` and ``secret`` are both set. The secret is kept as a
    :class:`~pydantic.SecretStr`: its repr, a dump of the config and every error message show
    ``**********`` instead.
    """

    # "host:port" the owner-facing pages listen on; "" = pages off (links still work elsewhere)
    listen: str = ""
    # the base of the links, e.g. "https://mail.example.com/notice"
    public_url: str = ""
    # the HMAC-SHA256 key the links are signed with
    secret: SecretStr = SecretStr("")
    # a link works for this many days after the notice's login
    link_days: int = Field(default=7, ge=1, le=90)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            url = urllib.parse.urlsplit(value)
            host = url.hostname
            url.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            host = None
        if url.scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
            raise ValueError(
                'must be an http:// or https:// URL, e.g. "https://mail.example.com/notice"'
            )
        if url.query or url.fragment or "?" in value or "#" in value or "@" in url.netloc:
            raise ValueError("must be a plain base URL: no user, query (?...) or fragment (#...)")
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        # the message never repeats the value
        text = value.get_secret_value()
        if text and len(text) < MIN_SECRET_CHARS:
            raise ValueError(
                f"must be at least {MIN_SECRET_CHARS} characters"
                " (e.g. the output of `openssl rand -base64 32`)"
            )
        return value

    @model_validator(mode="after")
    def _check_together(self) -> WebConfig:
        secret = bool(self.secret.get_secret_value())
        if not self.public_url and (self.listen or secret):
            raise ValueError(
                f"public_url is required when {'listen' if self.listen else 'secret'} is set"
                ' (the base of the links, e.g. "https://mail.example.com/notice")'
            )
        if self.public_url and not secret:
            raise ValueError(
                "secret is required when public_url is set (the key the links are signed with,"
                f" at least {MIN_SECRET_CHARS} characters)"
            )
        return self

    @property
    def links_on(self) -> bool:
        """Whether notices carry the owner's links."""
        return bool(self.public_url and self.secret.get_secret_value())


class ThrottleRule(_Model):
    max: int = Field(ge=1)
    window_s: float = Field(gt=0)


class DeliveryConfig(_Model):
    # a new notice waits this long before its first delivery, so that the services a mail
    # client uses together (IMAP, then SMTP) are named in one notice
    hold_s: float = Field(default=60.0, ge=0)
    # logins from the origin of a notice not yet delivered, within this window, join it
    coalesce_window_s: float = Field(default=600.0, ge=0)
    # at most `max` notices per account and channel within `window_s`; what exceeds waits
    # and is folded into the next notice that may be sent
    throttle: tuple[ThrottleRule, ...] = (
        ThrottleRule(max=3, window_s=3600),
        ThrottleRule(max=10, window_s=48 * 3600),
    )
    # shadow mode: notices are recorded and rendered ("shadow" in the outbox) but none is sent
    dry_run: bool = False


class BreakerConfig(_Model):
    enabled: bool = True
    # notices are counted in this rolling window...
    window_s: float = Field(default=600.0, gt=0)
    # ...and compared with the average window of this much history before it
    baseline_s: float = Field(default=7 * 86400.0, gt=0)
    # trips when a window holds more than factor x the baseline's average window...
    factor: float = Field(default=10.0, gt=1)
    # ...and at least this many notices (a quiet system's small bumps never trip it)
    min_notices: int = Field(default=50, ge=1)
    # trips when a window holds more notices than this, whatever the baseline
    cap: int = Field(default=1000, ge=1)
    # trips when more accounts than this get the same new provider or new country in a window
    same_origin_accounts: int = Field(default=25, ge=1)
    # closes by itself after this long without a tripping window; 0 = only an operator closes
    close_after_s: float = Field(default=3600.0, ge=0)
    # "outbox release" sends held notices at most this fast
    release_per_s: float = Field(default=10.0, gt=0)


class LoggingConfig(_Model):
    # "plain" lines or "json" lines (one object per line, for log collectors)
    format: Literal["plain", "json"] = "plain"


class MetricsConfig(_Model):
    enabled: bool = True
    # Prometheus metrics (/metrics) and health checks (/healthz, /readyz); keep it off the
    # network Dovecot's listener is on unless a scraper needs it
    listen: str = "127.0.0.1:9490"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class GeoGuardConfig(_Model):
    enabled: bool = True
    # known (account, origin) pairs re-resolved when a geo file changed
    sample: int = Field(default=2000, ge=10)
    # share of them that may change country or provider before the guard acts
    max_changed: float = Field(default=0.2, gt=0, le=1)
    # "refuse": keep the old file on reload (at start the new one is used and its notices held);
    # "hold": use the new file and hold owner notices until an operator releases them
    action: Literal["refuse", "hold"] = "refuse"


class QueueConfig(_Model):
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    batch_size: int = Field(default=64, ge=1, le=10_000)
    concurrency: int = Field(default=16, ge=1, le=1000)
    lease_s: float = Field(default=60.0, gt=0)
    backoff_base_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=3600.0, gt=0)
    deadline_s: float = Field(default=2 * 86400.0, gt=0)
    # at shutdown, deliveries in flight get this long to finish; the rest go back to the queue
    stop_timeout_s: float = Field(default=10.0, ge=0, le=300)
    # the worker's name in claims: "" is the host's name; each process on a node takes a slot
    # of it ("mail1/0", "mail1/1"), so a restarted process knows its predecessor's claims
    worker_id: str = Field(default="", max_length=100, pattern=r"^[^#/\s]*$")


class ResponseConfig(_Model):
    # what an owner's (or an operator's) block of a login's origin covers: "provider" is the
    # origin's provider in its country (its prefix when the provider is unknown), "prefix" the
    # network prefix only
    block_scope: Literal["provider", "prefix"] = "provider"
    # how long a block lasts; blocking the same origin again extends it
    block_days: int = Field(default=7, ge=1, le=365)
    # a program run when an owner answers "It wasn't me", with the notice and the block as
    # JSON on its standard input (e.g. a script calling `doveadm kick`); () = none
    command: Annotated[tuple[str, ...], _PROGRAM] = ()
    # the program is killed when it runs longer than this
    command_timeout_s: float = Field(default=30.0, gt=0, le=3600)


RecipientFallback = Literal["none", "login", "template"]


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_quiet_hours(value: str) -> tuple[datetime.time, datetime.time] | None:
    """``"23:00-07:00"`` -> (23:00, 07:00); ``""`` -> None (no quiet hours)."""
    if not value.strip():
        return None
    start, sep, end = value.replace(" ", "").partition("-")
    times = []
    for part in (start, end):
        match = _CLOCK.match(part)
        if not sep or not match:
            raise ValueError('must be "HH:MM-HH:MM", e.g. "23:00-07:00", or ""')
        times.append(datetime.time(int(match.group(1)), int(match.group(2))))
    if times[0] == times[1]:
        raise ValueError("start and end are the same")
    return times[0], times[1]


class _ChannelBase(_Model):
    name: str = ""
    # the channel is for operators' alerts, not account owners (used by the storm breaker)
    admin: bool = False
    # local time (recipient's zone) when non-urgent notices wait for morning; "" = never
    quiet_hours: str = ""
    # reason combinations that are sent even in quiet hours ("+" joins reasons that must all
    # be present)
    quiet_urgent: tuple[str, ...] = ("new_country+new_provider",)
    # how a recipient is found when the contacts table has none for the account: "login" uses
    # the login itself when it looks like one (an e-mail address / a phone number), "template"
    # fills recipient_template ("{login}", "{local}", "{domain}"), "none" gives up
    recipient_fallback: RecipientFallback = "none"
    recipient_template: str = ""

    @model_validator(mode="before")
    @classmethod
    def _timeout_alias(cls, data: Any) -> Any:
        # "timeout" reads naturally in a config file; "timeout_s" says the unit
        if isinstance(data, dict) and "timeout" in data and "timeout_s" not in data:
            data = dict(data)
            data["timeout_s"] = data.pop("timeout")
        return data

    @model_validator(mode="after")
    def _check_template(self) -> _ChannelBase:
        if self.recipient_fallback == "template" and not self.recipient_template:
            raise ValueError('recipient_fallback = "template" needs recipient_template')
        check_placeholders(
            self.recipient_template,
            frozenset({"login", "local", "domain"}),
            "recipient_template",
        )
        return self

    @field_validator("quiet_hours")
    @classmethod
    def _check_quiet(cls, value: str) -> str:
        parse_quiet_hours(value)
        return value

    @field_validator("quiet_urgent")
    @classmethod
    def _check_urgent(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = {r.value for r in Reason}
        for combo in value:
            unknown = set(combo.split("+")) - known
            if unknown:
                raise ValueError(f"unknown reason(s) {', '.join(sorted(unknown))} in {combo!r}")
        return value


class LogChannelConfig(_ChannelBase):
    type: Literal["log"]


class WebhookChannelConfig(_ChannelBase):
    type: Literal["webhook"]
    url: str
    secret: str = ""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class EmailChannelConfig(_ChannelBase):
    type: Literal["email"]
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    sender: str
    username: str = ""
    password: str = ""
    starttls: bool = False
    tls: bool = False
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    recipient_fallback: RecipientFallback = "login"

    @field_validator("sender")
    @classmethod
    def _check_sender(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+", value):
            raise ValueError("must be a bare address such as no-reply@mail.example.jp")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> EmailChannelConfig:
        if self.starttls and self.tls:
            raise ValueError("choose starttls (upgrade on port 587/25) or tls (port 465), not both")
        return self


class SmsChannelConfig(_ChannelBase):
    type: Literal["sms"]
    quiet_hours: str = "23:00-07:00"
    url: str
    method: Literal["POST", "PUT", "GET"] = "POST"
    body_format: Literal["json", "form"] = "json"
    # each value is a template over {phone}, {text}, {id}, {login}
    body: dict[str, str] = Field(default_factory=lambda: {"to": "{phone}", "text": "{text}"})
    auth_header: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: dict[str, str]) -> dict[str, str]:
        for key, template in value.items():
            check_placeholders(template, SMS_PLACEHOLDERS, f"body.{key}")
        if not any("{text}" in template for template in value.values()):
            raise ValueError("no field carries {text}, the message itself")
        return value


SMS_PLACEHOLDERS = frozenset({"phone", "text", "id", "login"})


def check_placeholders(template: str, allowed: frozenset[str], where: str) -> None:
    """Refuse a ``str.format`` template with other than plain ``{name}`` fields of ``allowed``."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            raise ValueError(
                f"{where}: unknown placeholder {{{name}}}; use {', '.join(sorted(allowed))}"
            )


class CommandChannelConfig(_ChannelBase):
    type: Literal["command"]
    command: Annotated[tuple[str, ...], _PROGRAM] = Field(min_length=1)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # which recipient the program needs, if any: "email", "phone" or "none"
    recipient: Literal["none", "email", "phone"] = "none"


ChannelConfig = Annotated[
    LogChannelConfig
    | WebhookChannelConfig
    | EmailChannelConfig
    | SmsChannelConfig
    | CommandChannelConfig,
    Field(discriminator="type"),
]


class Config(_Model):
    server: ServerConfig = ServerConfig()
    geoip: GeoipConfig = GeoipConfig()
    storage: StorageConfig = StorageConfig()
    accounts: AccountsConfig = AccountsConfig()
    policy: PolicyConfig = PolicyConfig()
    compromise: CompromiseConfig = CompromiseConfig()
    message: MessageConfig = MessageConfig()
    queue: QueueConfig = QueueConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    networks: NetworksConfig = NetworksConfig()
    breaker: BreakerConfig = BreakerConfig()
    geo_guard: GeoGuardConfig = GeoGuardConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    response: ResponseConfig = ResponseConfig()
    web: WebConfig = WebConfig()
    channels: tuple[ChannelConfig, ...] = (LogChannelConfig(type="log", name="log"),)

    @model_validator(mode="before")
    @classmethod
    def _name_channels(cls, data: Any) -> Any:
        """Give each unnamed channel the name ``<type>-<index>`` and refuse duplicates."""
        if not isinstance(data, dict) or not isinstance(data.get("channels"), list):
            return data
        channels: list[Any] = []
        seen: set[str] = set()
        for index, raw in enumerate(data["channels"]):
            if isinstance(raw, dict):
                raw = dict(raw)
                name = raw.get("name") or f"{raw.get('type', 'channel')}-{index}"
                if name in seen:
                    raise ValueError(f"channels[{index}].name: duplicate channel name {name!r}")
                seen.add(str(name))
                raw["name"] = name
            channels.append(raw)
        return {**data, "channels": channels}


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("log", "webhook", "email", "sms", "command") and path.endswith("]"):
            # pydantic adds the discriminator tag to the location; the user did not write it
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def config_from_mapping(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document; raises ConfigError naming each bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for err in exc.errors():
            message = str(err["msg"])
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
                # the validator's own words, without pydantic's "Value error, " in front
                message = str(err["ctx"]["error"])
            errors.append((_key_path(tuple(err["loc"])), message))
        raise ConfigError(errors) from None


_M = TypeVar("_M", bound=BaseModel)


def _absolute(value: str, base: str) -> str:
    if not value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def _resolved(model: _M, base: str) -> _M:
    updates: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        marks = [mark for mark in info.metadata if isinstance(mark, _PathKey)]
        new: Any
        if marks and marks[0].program:
            # "notify-owner" is looked up on PATH; "bin/notify-owner" is a file
            program = value[0] if value else ""
            new = (_absolute(program, base), *value[1:]) if "/" in program else value
        elif marks:
            new = (
                _absolute(value, base)
                if isinstance(value, str)
                else tuple(_absolute(item, base) for item in value)
            )
        elif isinstance(value, BaseModel):
            new = _resolved(value, base)
        elif isinstance(value, tuple) and all(isinstance(item, BaseModel) for item in value):
            new = tuple(_resolved(item, base) for item in value)
        else:
            continue
        if new != value:
            updates[name] = new
    return model.model_copy(update=updates) if updates else model


def resolve_paths(config: Config, base: str | Path) -> Config:
    """``config`` with every relative path it names (the keys of :func:`path_keys`) made
    absolute against the directory ``base``; absolute and empty values stay as they are."""
    return _resolved(config, os.path.abspath(base))


def path_keys() -> list[str]:
    """The keys whose relative values :func:`resolve_paths` resolves, as key paths."""
    channel_models: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(ChannelConfig)[0])

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        found: list[str] = []
        for name, info in model.model_fields.items():
            marks = [mark for mark in info.metadata if isinstance(mark, _PathKey)]
            annotation = info.annotation
            if marks:
                found.append(f"{prefix}{name}[0]" if marks[0].program else f"{prefix}{name}")
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += walk(annotation, f"{prefix}{name}.")
            elif model is Config and name == "channels":
                for channel in channel_models:
                    found += walk(channel, "channels[].")
        return found

    return list(dict.fromkeys(walk(Config, "")))


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the embedded defaults.

    Relative paths in a file are taken from the file's directory, so that a command finds the
    same store, geo files and lists from wherever it runs; those of the embedded defaults
    (``var/policy-server.sqlite3``) from the current directory.
    """
    if path is None:
        return resolve_paths(Config(), os.getcwd())
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([("(file)", f"{path} is not UTF-8")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"{path}: invalid TOML: {exc}")]) from None
    return resolve_paths(config_from_mapping(data), Path(path).parent)
