"""When and to whom a notice may go: recipients, quiet hours, per-account throttling.

Pure functions of their arguments, so that each rule can be tested on its own.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from collections.abc import Iterable, Sequence
from typing import Literal

from ..config import ChannelConfig, ThrottleRule, parse_quiet_hours
from ..model import Reason, Recipient
from ..policy import URGENT
from ..store.base import Contact

RecipientKind = Literal["email", "phone"] | None

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9]{6,15}$")


def looks_like(kind: Literal["email", "phone"], value: str) -> bool:
    pattern = _EMAIL if kind == "email" else _PHONE
    return bool(pattern.match(value.strip()))


def zone(name: str | None, default: str) -> zoneinfo.ZoneInfo:
    """The named time zone, or ``default`` when the name is missing or unknown."""
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return zoneinfo.ZoneInfo(default)


def resolve_recipient(
    kind: RecipientKind,
    contact: Contact | None,
    login: str,
    fallback: str,
    template: str,
) -> Recipient | None:
    """Who gets a notice through a channel needing ``kind``; None when nobody can.

    The contacts table comes first; then the channel's fallback: ``login`` (the login itself
    when it is an address of the right kind) or ``template`` (``{login}``, ``{local}``,
    ``{domain}`` filled from the login).
    """
    language = contact.language if contact else None
    timezone = contact.timezone if contact else None
    if kind is None:
        return Recipient("", language, timezone)
    stored = (contact.email if kind == "email" else contact.phone) if contact else None
    address = stored or None
    if address is None and fallback == "login" and looks_like(kind, login):
        address = login.strip()
    if address is None and fallback == "template" and template:
        local, _, domain = login.strip().partition("@")
        candidate = template.format(login=login.strip(), local=local, domain=domain)
        if looks_like(kind, candidate):
            address = candidate
    if address is None:
        return None
    return Recipient(address, language, timezone)


def recipient_for(
    kind: RecipientKind, config: ChannelConfig, contact: Contact | None, login: str
) -> Recipient | None:
    """Who gets a notice through the channel ``config`` describes (see resolve_recipient)."""
    return resolve_recipient(
        kind, contact, login, config.recipient_fallback, config.recipient_template
    )


#: reasons that are urgent whatever a channel's ``quiet_urgent`` says
ALWAYS_URGENT: frozenset[str] = frozenset(reason.value for reason in URGENT)


def is_urgent(reasons: Iterable[Reason], urgent: Sequence[str]) -> bool:
    """Whether the reasons include every reason of one of the ``urgent`` combinations, or one
    that is always urgent."""
    have = {r.value for r in reasons}
    return bool(have & ALWAYS_URGENT) or any(set(combo.split("+")) <= have for combo in urgent)


def quiet_until(
    now: float,
    quiet_hours: str,
    tz: zoneinfo.ZoneInfo,
    reasons: Iterable[Reason],
    urgent: Sequence[str],
) -> float | None:
    """The end of the quiet period ``now`` falls in (unix time), or None to send now."""
    window = parse_quiet_hours(quiet_hours)
    if window is None or is_urgent(reasons, urgent):
        return None
    start, end = window
    local = datetime.datetime.fromtimestamp(now, tz)
    clock = local.time()
    # the usual case runs across midnight (23:00-07:00): inside is then after start OR before end
    inside = start <= clock < end if start < end else clock >= start or clock < end
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + datetime.timedelta(days=1)
    wake = datetime.datetime.combine(day, end, tzinfo=tz)
    return wake.timestamp()


def throttled_until(
    sent: Sequence[float], now: float, rules: Sequence[ThrottleRule]
) -> float | None:
    """When the next notice may go out under every rule (unix time), or None for now.

    ``sent`` are the times notices already went out, oldest first.
    """
    until: float | None = None
    for rule in rules:
        recent = [t for t in sent if t > now - rule.window_s]
        if len(recent) >= rule.max:
            # free again when enough of the recent ones have left the window
            free_at = recent[len(recent) - rule.max] + rule.window_s
            until = free_at if until is None else max(until, free_at)
    return until
