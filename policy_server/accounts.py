"""Account identity: the key under which a login's history is kept."""

from __future__ import annotations

import fnmatch
import functools
import re
import unicodedata
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from babel import Locale

from .config import AccountsConfig


def normalize_login(login: str, config: AccountsConfig) -> str:
    """The account key for a login: NFC, case-folded and trimmed unless configured otherwise.

    Dovecot usually lower-cases already (``auth_username_format = %Lu``), but a passdb may not,
    and the same person typing ``Alice@Example.com`` must not become a new account.
    """
    key = login
    if config.strip:
        key = key.strip()
    ascii_only = key.isascii()  # then NFC changes nothing and casefold is lower
    if config.nfc and not ascii_only:
        key = unicodedata.normalize("NFC", key)
    if config.casefold:
        key = key.lower() if ascii_only else key.casefold()
    return key


def is_exempt(account: str, config: AccountsConfig) -> bool:
    """Whether ``[accounts] exempt`` names the account: its logins are recorded, never
    notified. The patterns are normalised as logins are, so "NoReply@*" matches too."""
    if not config.exempt:
        return False
    return _exempt_pattern(config).fullmatch(account) is not None


@functools.lru_cache(maxsize=8)
def _exempt_pattern(config: AccountsConfig) -> re.Pattern[str]:
    keys = (normalize_login(pattern, config) for pattern in config.exempt)
    return re.compile("|".join(f"(?:{fnmatch.translate(key)})" for key in keys))


def trip_end(text: str, zone: ZoneInfo) -> float | None:
    """When a trip whose last day is ``text`` (YYYY-MM-DD) ends: the end of that day in
    ``zone``, as unix time; None when ``text`` is no date."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).timestamp()


#: CLDR's two-letter regions that ISO 3166-1 gives no country: groupings (EU, EZ, UN, QO), the
#: codes reserved for other uses (AC, CP, CQ, DG, EA, IC, TA), pseudo-locales (XA, XB) and
#: "unknown" (ZZ). Kosovo's XK, though user-assigned, stays: geo databases place logins there.
_NO_COUNTRY = frozenset(
    ("AC", "CP", "CQ", "DG", "EA", "EU", "EZ", "IC", "QO", "TA", "UN", "XA", "XB", "ZZ")
)


@functools.cache
def _countries() -> frozenset[str]:
    return frozenset(
        code
        for code in Locale("en").territories
        if isinstance(code, str) and re.fullmatch("[A-Z]{2}", code) and code not in _NO_COUNTRY
    )


def country_code(text: str) -> str | None:
    """An ISO 3166-1 alpha-2 country code, upper case; None for anything else.

    A code no geo database gives (``UK``, which is ``GB``; ``XX``) is refused, not stored: a
    trip to it would never match a login and silence nothing."""
    code = text.strip().upper()
    return code if code in _countries() else None
