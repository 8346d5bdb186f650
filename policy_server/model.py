"""The domain types every part shares: a login event, an origin, reason codes, a notice."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .client import Client


class Command(enum.StrEnum):
    """The two commands Dovecot's auth-policy client sends."""

    ALLOW = "allow"
    REPORT = "report"


class AddressClass(enum.StrEnum):
    """What kind of address a client address is, before any geo lookup."""

    GLOBAL = "global"
    PRIVATE = "private"
    LOOPBACK = "loopback"
    CGNAT = "cgnat"
    LINK_LOCAL = "link-local"
    RESERVED = "reserved"


class Reason(enum.StrEnum):
    """Why a login is unusual. The values are the reason codes of the external contract."""

    FIRST_USE = "first_use"
    NEW_COUNTRY = "new_country"
    NEW_PROVIDER = "new_provider"
    # a new origin inside one of the admin's known networks, by its category
    VIA_VPN = "via_vpn"
    VIA_HOSTING = "via_hosting"
    VIA_MAIL_APP = "via_mail_app"
    VIA_CORPORATE = "via_corporate"
    # a successful login from an origin the account's owner (or an operator) blocked: allow
    # checks before the password are off, or the block came after the allow answer
    BLOCKED_ORIGIN = "blocked_origin"
    # a mail program the account never used, from a new origin
    NEW_CLIENT = "new_client"
    # a login too far from the previous one for the time between them
    IMPOSSIBLE_TRAVEL = "impossible_travel"
    # logins from many providers or countries within an hour: a hijacked account
    MANY_ORIGINS = "many_origins"


@dataclass(frozen=True, slots=True)
class LoginEvent:
    """One request from Dovecot, reduced to what the service needs.

    ``device_id`` is the mail program's IMAP ID as Dovecot sends it (``"name" "Thunderbird" …``),
    ``fail_type`` Dovecot 2.4's reason for a failed login (``credentials``, ``account``, …).
    ``attributes`` keeps the other attributes Dovecot sent (never ``pwhash``); ``repairs`` says
    what the parser had to put right in the request, for the log.
    """

    command: Command
    login: str
    remote: str
    protocol: str
    success: bool | None = None
    policy_reject: bool | None = None
    tls: bool | None = None
    session_id: str = ""
    device_id: str = ""
    fail_type: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    repairs: tuple[str, ...] = ()


def provider_id(asn: int | None, as_org: str | None) -> str | None:
    """How a provider is named when compared and stored: ``AS<n>`` when the ASN is known,
    ``org:<name>`` when only the AS organisation is, else None."""
    if asn is not None:
        return f"AS{asn}"
    if as_org:
        return f"org:{as_org}"
    return None


@dataclass(frozen=True, slots=True)
class Location:
    """Where a City database places an address: degrees, and its accuracy radius in km."""

    latitude: float
    longitude: float
    radius_km: float = 0.0


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a client address comes from.

    ``provider`` is the identity used to compare providers: ``AS<n>`` when the ASN is known,
    ``org:<name>`` when only the AS organisation is (as with the bundled dataset), else None.
    """

    address: str
    address_class: AddressClass
    prefix: str
    country: str | None = None
    asn: int | None = None
    as_org: str | None = None
    # the admin's known network the address is in: its category and label
    network: str | None = None
    network_label: str | None = None
    # where a City database places the address (None without one, or when it cannot say)
    location: Location | None = None

    @property
    def provider(self) -> str | None:
        return provider_id(self.asn, self.as_org)


@dataclass(frozen=True, slots=True)
class KnownOrigin:
    """One origin an account has logged in from successfully, as stored."""

    prefix: str
    country: str | None
    provider: str | None
    as_org: str | None
    first_seen: float
    last_seen: float
    count: int
    # the admin's known-network category it was in when learned (None: none, or not known)
    network: str | None = None
    # the mail programs seen from it, by name, the most recent last
    clients: tuple[str, ...] = ()
    # where its last login was placed, if a City database could say
    location: Location | None = None
    # when the owner confirmed it ("It was me"), if they did
    confirmed: float | None = None


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """An account's own choices, and when the hijack pattern last alerted about it.

    ``notices`` off: its logins are learned and make no notice (a blocked origin's still do).
    A trip (``trip_country`` until ``trip_until``): a new origin in that country is learned
    without a notice.
    """

    notices: bool = True
    trip_country: str | None = None
    trip_until: float | None = None
    alerted_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``history export`` and ``account --json`` show it."""
        return {
            "notices": self.notices,
            "trip_country": self.trip_country,
            "trip_until": self.trip_until,
            "alerted_at": self.alerted_at,
        }

    def travelling(self, country: str | None, at: float) -> bool:
        """Whether a login in ``country`` at ``at`` is on the declared trip."""
        return (
            country is not None
            and country == self.trip_country
            and self.trip_until is not None
            and at <= self.trip_until
        )


NO_SETTINGS = AccountSettings()


@dataclass(frozen=True, slots=True)
class History:
    """What the store knows about an account: its known origins (empty for a new account) and
    its settings."""

    account: str
    origins: tuple[KnownOrigin, ...] = ()
    settings: AccountSettings = NO_SETTINGS

    @property
    def is_new(self) -> bool:
        return not self.origins

    def find(self, origin: Origin) -> KnownOrigin | None:
        """The stored row for exactly this origin (same prefix, country and provider), if any."""
        for known in self.origins:
            if (
                known.prefix == origin.prefix
                and known.country == origin.country
                and known.provider == origin.provider
            ):
                return known
        return None


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who a channel delivers a notice to, and in which language and time zone.

    ``address`` is an e-mail address or a phone number, or "" for channels that need none
    (log, webhook). Language and time zone are None when the account has no preference.
    """

    address: str = ""
    language: str | None = None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class Travel:
    """A journey too fast to be one person's: from where, how far (km, less both accuracy
    radii) and in how many hours."""

    from_country: str | None
    km: float
    hours: float

    def payload(self) -> dict[str, Any]:
        return {
            "from_country": self.from_country,
            "km": round(self.km),
            "hours": round(self.hours, 2),
        }

    @classmethod
    def from_payload(cls, data: Any) -> Travel | None:
        if not isinstance(data, dict):
            return None
        return cls(data.get("from_country"), float(data["km"]), float(data["hours"]))


@dataclass(frozen=True, slots=True)
class Notice:
    """A queued notice: what happened and why, as stored with the queue row.

    ``time`` is when the login was reported (aware datetime, UTC).
    """

    id: str
    account: str
    login: str
    reasons: tuple[Reason, ...]
    protocol: str
    remote: str
    time: datetime
    country: str | None
    asn: int | None
    as_org: str | None
    prefix: str
    history: tuple[dict[str, Any], ...] = ()
    # every service seen from this origin while the notice waited (IMAP then SMTP, ...)
    protocols: tuple[str, ...] = ()
    # the admin's known network the login came through (category, label), if any
    network: str | None = None
    network_label: str | None = None
    # the mail program the login's IMAP ID named, if any
    client: Client | None = None
    # impossible_travel: where the previous login was, how far and how long before
    travel: Travel | None = None
    # many_origins: the providers and countries of the account's logins in the window
    spread: tuple[str, ...] = ()

    @property
    def provider(self) -> str | None:
        """The login's provider as origins name it (see :func:`provider_id`)."""
        return provider_id(self.asn, self.as_org)

    @property
    def services(self) -> tuple[str, ...]:
        """The protocols to name: all seen, first the one that triggered the notice."""
        return self.protocols or (self.protocol,)

    def payload_fields(self) -> dict[str, Any]:
        """The fields of the external webhook contract, without ``message``."""
        return {
            "id": self.id,
            "login": self.login,
            "reasons": [r.value for r in self.reasons],
            "protocol": self.protocol,
            "remote": self.remote,
            "country": self.country,
            "asn": self.asn,
            "as_org": self.as_org,
            "time": self.time.isoformat(),
            "protocols": list(self.services),
            "network": self.network,
            "network_label": self.network_label,
            "client": self.client.payload() if self.client else None,
            "travel": self.travel.payload() if self.travel else None,
            "origins": list(self.spread) if self.spread else None,
        }
