"""The owner's form's CSRF check: a cookie nonce and a form field bound to it and the link.

GET sets a random nonce in a ``SameSite=Strict`` cookie and puts ``HMAC(secret, nonce, link
token)`` in the form. A POST is accepted only with both, matching: another site can neither
read the field nor make the browser send the cookie with its own form.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from hashlib import sha256
from typing import Final

COOKIE: Final = "ps_csrf"
_LABEL: Final = b"policy-server owner form\x00"
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{22,64}")


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def usable_nonce(value: str | None) -> str | None:
    """``value`` when it looks like a nonce this module made, else None."""
    return value if value is not None and _NONCE.fullmatch(value) else None


def form_value(secret: str, nonce: str, link_token: str) -> str:
    """The form field for ``link_token`` in a browser holding ``nonce``."""
    mac = hmac.new(
        secret.encode("utf-8"),
        _LABEL + nonce.encode("ascii") + b"\x00" + link_token.encode("ascii"),
        sha256,
    ).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def form_ok(secret: str, nonce: str | None, link_token: str, given: str) -> bool:
    """Whether a POST's field ``given`` belongs to its cookie's ``nonce`` and its link."""
    nonce = usable_nonce(nonce)
    if nonce is None or not given or not link_token.isascii():
        return False
    return hmac.compare_digest(form_value(secret, nonce, link_token), given)
