"""The configuration: one TOML file validated into frozen, typed objects.

Every default lives here; ``conf/policy-server.toml`` documents each key. Errors name the key path
(``server.listen``, ``channels[0].url``) so that ``check-config`` can point at the line to fix.
"""

from __future__ import annotations

import ipaddress
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
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


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("must be host:port, e.g. 127.0.0.1:4001 or [::1]:4001")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError("port must be between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
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
    country_db: str = ""
    asn_db: str = ""
    asn_names: str = ""
    bundled: bool = True
    ipv4_prefix: int = Field(default=24, ge=8, le=32)
    ipv6_prefix: int = Field(default=48, ge=16, le=128)


class StorageConfig(_Model):
    backend: Literal["sqlite"] = "sqlite"
    path: str = "var/policy-server.sqlite3"
    group_commit_wait_ms: float = Field(default=2.0, ge=0, le=100)
    group_commit_max_batch: int = Field(default=256, ge=1, le=10_000)
    busy_timeout_ms: int = Field(default=5000, ge=0, le=60_000)
    synchronous: Literal["normal", "full"] = "normal"


class AccountsConfig(_Model):
    nfc: bool = True
    casefold: bool = True
    strip: bool = True


class PolicyConfig(_Model):
    notify: tuple[Reason, ...] = (Reason.FIRST_USE, Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    touch_granularity_s: int = Field(default=3600, ge=0)


class MessageConfig(_Model):
    language: str = "ja"
    timezone: str = "Asia/Tokyo"
    service_name: str = "Example Mail"
    help_url: str = "https://mail.example.jp/help/password"
    templates_dir: str = ""

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class QueueConfig(_Model):
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    batch_size: int = Field(default=64, ge=1, le=10_000)
    concurrency: int = Field(default=16, ge=1, le=1000)
    lease_s: float = Field(default=60.0, gt=0)
    backoff_base_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=3600.0, gt=0)
    deadline_s: float = Field(default=2 * 86400.0, gt=0)


class LogChannelConfig(_Model):
    type: Literal["log"]
    name: str = ""


class WebhookChannelConfig(_Model):
    type: Literal["webhook"]
    name: str = ""
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


ChannelConfig = Annotated[LogChannelConfig | WebhookChannelConfig, Field(discriminator="type")]


class Config(_Model):
    server: ServerConfig = ServerConfig()
    geoip: GeoipConfig = GeoipConfig()
    storage: StorageConfig = StorageConfig()
    accounts: AccountsConfig = AccountsConfig()
    policy: PolicyConfig = PolicyConfig()
    message: MessageConfig = MessageConfig()
    queue: QueueConfig = QueueConfig()
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
        elif part in ("log", "webhook") and path.endswith("]"):
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
            errors.append((_key_path(tuple(err["loc"])), message))
        raise ConfigError(errors) from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
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
    return config_from_mapping(data)
