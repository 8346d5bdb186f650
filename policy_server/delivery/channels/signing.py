"""Webhook signatures in the Standard Webhooks scheme (https://www.standardwebhooks.com/).

The signed content is ``{id}.{timestamp}.{body}``: binding the id and the time to the body lets a
receiver reject replays, which a body-only signature cannot.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a credential
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


def secret_key(secret: str) -> bytes:
    """The HMAC key of a configured secret.

    A ``whsec_`` secret carries its key in base64, as Standard Webhooks libraries generate it;
    any other string is used as its UTF-8 bytes. The error text never contains the secret.
    """
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        # secrets copied from some dashboards lose their "=" padding
        encoded += "=" * (-len(encoded) % 4)
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a secret starting with whsec_ must continue in base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("the signing secret is empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message.

    ``secret`` is a configured secret string, or a key already derived by :func:`secret_key`.
    """
    key = secret if isinstance(secret, bytes) else secret_key(secret)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(
    secret: str | bytes,
    msg_id: str,
    timestamp: int | str,
    body: bytes,
    signature_header: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``signature_header`` holds a valid signature of this message at a fresh timestamp.

    The header may list several space-separated signatures (as during a key rotation); any valid
    ``v1`` one is enough. Comparison is constant-time.
    """
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, stamp, body).encode("ascii")
    valid = False
    for candidate in signature_header.split():
        if not candidate.startswith(SIGNATURE_VERSION + ","):
            continue
        # no early exit, so the time taken does not tell which candidate matched
        valid |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    return valid
