"""Webhook signatures, checked against the independent Standard Webhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from policy_server.delivery.channels.signing import secret_key, sign, verify

KEY = bytes(range(32))
WHSEC = "whsec_" + base64.b64encode(KEY).decode()
BODY = '{"id":"n-1","message":"日本からのアクセス"}'.encode()
NOW = 1_700_000_000


def test_whsec_secret_is_base64_key() -> None:
    assert secret_key(WHSEC) == KEY


def test_whsec_without_padding_is_accepted() -> None:
    key = b"sixteen byte key" + b"x"
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert secret_key(unpadded) == key


def test_plain_secret_is_utf8_bytes() -> None:
    assert secret_key("pässword") == "pässword".encode()


def test_bad_whsec_secret_is_refused_without_echoing_it() -> None:
    secret = "whsec_not*base64!"
    with pytest.raises(ValueError) as info:
        secret_key(secret)
    assert secret not in str(info.value)
    assert "not*base64" not in str(info.value)


def test_signature_matches_standardwebhooks_library() -> None:
    ours = sign(WHSEC, "n-1", NOW, BODY)
    theirs = Webhook(WHSEC).sign("n-1", datetime.fromtimestamp(NOW, tz=UTC), BODY.decode())
    assert ours == theirs


def test_plain_secret_signature_is_hmac_of_id_timestamp_body() -> None:
    expected = hmac.new(b"plain secret", b"n-1.%d." % NOW + BODY, hashlib.sha256).digest()
    assert sign("plain secret", "n-1", NOW, BODY) == "v1," + base64.b64encode(expected).decode()


def test_sign_accepts_derived_key() -> None:
    assert sign(KEY, "n-1", NOW, BODY) == sign(WHSEC, "n-1", NOW, BODY)


def test_verify_accepts_own_and_library_signatures() -> None:
    header = sign(WHSEC, "n-1", NOW, BODY)
    assert verify(WHSEC, "n-1", NOW, BODY, header, now=NOW + 10)
    theirs = Webhook(WHSEC).sign("n-1", datetime.fromtimestamp(NOW, tz=UTC), BODY.decode())
    assert verify(WHSEC, "n-1", str(NOW), BODY, theirs, now=NOW)


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "body"),
    [("n-2", NOW, BODY), ("n-1", NOW + 1, BODY), ("n-1", NOW, BODY + b" ")],
)
def test_verify_rejects_any_change(msg_id: str, timestamp: int, body: bytes) -> None:
    header = sign(WHSEC, "n-1", NOW, BODY)
    assert not verify(WHSEC, msg_id, timestamp, body, header, now=NOW)


def test_verify_rejects_other_secret_and_stale_timestamp() -> None:
    header = sign(WHSEC, "n-1", NOW, BODY)
    assert not verify("other", "n-1", NOW, BODY, header, now=NOW)
    assert not verify(WHSEC, "n-1", NOW, BODY, header, now=NOW + 301)
    assert not verify(WHSEC, "n-1", NOW, BODY, header, now=NOW - 301)
    assert not verify(WHSEC, "n-1", "yesterday", BODY, header, now=NOW)


def test_verify_finds_valid_signature_among_several() -> None:
    good = sign(WHSEC, "n-1", NOW, BODY)
    old_key = sign("retired secret", "n-1", NOW, BODY)
    assert verify(WHSEC, "n-1", NOW, BODY, f"v2,whatever {old_key} {good}", now=NOW)
    assert not verify(WHSEC, "n-1", NOW, BODY, f"{old_key} v2,{good[3:]}", now=NOW)
