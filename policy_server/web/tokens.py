"""Signed link tokens: a notice, its account, an action and an expiry, in a few URL-safe bytes.

A token is the URL-safe base64 (no padding) of::

    header (1 byte: format version in the high nibble, id form and action below)
    expires (4 bytes, unix seconds, big-endian)
    notice id (16 bytes when it is a canonical UUID, else 1 length byte and its UTF-8)
    account (UTF-8, the rest)
    MAC (16 bytes: HMAC-SHA256 under the secret of a fixed label and everything above, cut
         to its first 128 bits)

The account travels in the token, authenticated by the MAC, so a page can tell whose notice a
link is for without reading the store. The token is readable (base64 is no encryption): it
holds nothing the owner does not know. Changing any character of it makes :func:`read_token`
fail: every byte is under the MAC and only the canonical encoding of the bytes is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta
from hashlib import sha256
from typing import Final

from ..config import WebConfig
from ..model import Notice

__all__ = [
    "ACTIONS",
    "LinkToken",
    "NoticeLinks",
    "TokenError",
    "expiry",
    "links",
    "make_token",
    "read_token",
]

#: what a link does: confirm ("It was me"), deny ("It wasn't me"), page (both buttons, for SMS)
ACTIONS: Final = ("confirm", "deny", "page")

_VERSION: Final = 1
_ID_UUID: Final = 0
_ID_TEXT: Final = 1
_MAC_BYTES: Final = 16
_LABEL: Final = b"policy-server notice link\x00"
_UUID_TEXT: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_B64_TEXT: Final = re.compile(r"[A-Za-z0-9_-]+")
#: longer input is refused before any work: no real token comes near it
MAX_TOKEN_CHARS: Final = 1024
_MAX_EXPIRES: Final = 2**32 - 1


class TokenError(ValueError):
    """A token that cannot be used; ``reason`` is "malformed", "forged", "expired" or
    "wrong action". The message never holds the token nor the secret."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"link token {reason}")


@dataclass(frozen=True, slots=True)
class LinkToken:
    """What a valid token says."""

    notice_id: str
    account: str
    action: str
    expires: int


@dataclass(frozen=True, slots=True)
class NoticeLinks:
    """The owner's links for one notice."""

    confirm: str
    deny: str
    page: str


def _key(secret: str) -> bytes:
    if not secret:
        raise ValueError("no secret to sign links with")
    return secret.encode("utf-8")


def _mac(secret: str, data: bytes) -> bytes:
    return hmac.new(_key(secret), _LABEL + data, sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_token(secret: str, notice_id: str, account: str, action: str, expires: int) -> str:
    """A token for ``action`` on notice ``notice_id`` of ``account``, valid until ``expires``
    (unix seconds). Raises ValueError for an unknown action or a value the format cannot hold."""
    if action not in ACTIONS:
        raise ValueError(f"unknown link action {action!r}; use {', '.join(ACTIONS)}")
    if not 0 <= expires <= _MAX_EXPIRES:
        raise ValueError(f"expiry {expires} is out of range")
    if not notice_id:
        raise ValueError("a link needs a notice id")
    if _UUID_TEXT.fullmatch(notice_id):
        id_form, id_bytes = _ID_UUID, uuid.UUID(notice_id).bytes
    else:
        raw = notice_id.encode("utf-8")
        if len(raw) > 255:
            raise ValueError("notice id longer than 255 bytes")
        id_form, id_bytes = _ID_TEXT, bytes([len(raw)]) + raw
    header = _VERSION << 4 | id_form << 2 | ACTIONS.index(action)
    data = struct.pack(">BI", header, expires) + id_bytes + account.encode("utf-8")
    return _b64(data + _mac(secret, data))


def read_token(secret: str, token: str, now: float, *, action: str | None = None) -> LinkToken:
    """What ``token`` says, when it was made with ``secret`` and has not expired at ``now``
    (unix seconds); with ``action``, it must also be a token for that action.

    Raises :class:`TokenError`: "malformed" (not a token), "forged" (not signed with
    ``secret``, or changed), "expired", "wrong action".
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _B64_TEXT.fullmatch(token):
        raise TokenError("malformed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed") from None
    # a character changed in the unused low bits of the last one decodes to the same bytes
    if _b64(raw) != token or len(raw) < 5 + 2 + _MAC_BYTES:
        raise TokenError("malformed")
    data, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, data)):
        raise TokenError("forged")
    # signed by us from here on: what does not parse is a format this version does not know
    header, expires = struct.unpack_from(">BI", data)
    id_form, action_code = header >> 2 & 0b11, header & 0b11
    if header >> 4 != _VERSION or action_code >= len(ACTIONS):
        raise TokenError("malformed")
    rest = data[5:]
    try:
        if id_form == _ID_UUID and len(rest) >= 16:
            notice_id, rest = str(uuid.UUID(bytes=rest[:16])), rest[16:]
        elif id_form == _ID_TEXT and rest and len(rest) > rest[0]:
            notice_id, rest = rest[1 : 1 + rest[0]].decode("utf-8"), rest[1 + rest[0] :]
        else:
            raise TokenError("malformed")
        account = rest.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("malformed") from None
    if now >= expires:
        raise TokenError("expired")
    found = LinkToken(notice_id, account, ACTIONS[action_code], expires)
    if action is not None and found.action != action:
        raise TokenError("wrong action")
    return found


def expiry(web: WebConfig, notice: Notice) -> int:
    """When the links of ``notice`` stop working: ``link_days`` after its login (unix s)."""
    when = notice.time if notice.time.tzinfo is not None else notice.time.replace(tzinfo=UTC)
    return int((when + timedelta(days=web.link_days)).timestamp())


def links(web: WebConfig, notice: Notice) -> NoticeLinks | None:
    """The owner's links for ``notice``: ``{public_url}/confirm?t=TOKEN``, ``/deny?t=``,
    ``/page?t=``; None when ``[web]`` has no ``public_url`` or no ``secret``."""
    if not web.links_on:
        return None
    secret = web.secret.get_secret_value()
    expires = expiry(web, notice)
    base = web.public_url.rstrip("/")
    urls = {
        action: f"{base}/{action}?t="
        + make_token(secret, notice.id, notice.account, action, expires)
        for action in ACTIONS
    }
    return NoticeLinks(confirm=urls["confirm"], deny=urls["deny"], page=urls["page"])
