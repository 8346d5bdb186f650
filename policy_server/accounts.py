"""Account identity: the key under which a login's history is kept."""

from __future__ import annotations

import unicodedata

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
