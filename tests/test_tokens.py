"""Signed link tokens: round trip, every way a token can be bad, the links of a notice."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from support import make_notice

from policy_server.config import WebConfig
from policy_server.web.tokens import (
    ACTIONS,
    LinkToken,
    TokenError,
    expiry,
    links,
    make_token,
    read_token,
)

SECRET = "0123456789abcdef0123456789abcdef-links"
OTHER = "fedcba9876543210fedcba9876543210-links"
NOTICE_ID = str(uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF))
NOW = 1_700_000_000.0
LATER = int(NOW) + 7 * 86400
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def web(**changes: object) -> WebConfig:
    settings: dict[str, object] = {
        "public_url": "https://mail.example.com/notice",
        "secret": SECRET,
        **changes,
    }
    return WebConfig.model_validate(settings)


def reason(secret: str, token: str, now: float = NOW, action: str | None = None) -> str:
    with pytest.raises(TokenError) as info:
        read_token(secret, token, now, action=action)
    return info.value.reason


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    ("notice_id", "account"),
    [
        (NOTICE_ID, "taro@example.jp"),
        ("test-3f1c", "太郎@例え.jp"),
        ("alert-x", ""),
        ("x" * 255, "a" * 300),
    ],
)
def test_round_trip(notice_id: str, account: str, action: str) -> None:
    token = make_token(SECRET, notice_id, account, action, LATER)
    assert read_token(SECRET, token, NOW) == LinkToken(notice_id, account, action, LATER)
    assert read_token(SECRET, token, NOW, action=action).action == action
    assert set(token) <= set(ALPHABET)


def test_compact_for_sms() -> None:
    # a UUID notice id travels as its 16 bytes: the whole token stays short
    token = make_token(SECRET, NOTICE_ID, "taro@example.jp", "page", LATER)
    assert len(token) <= 75
    assert len(make_token(SECRET, NOTICE_ID.upper(), "taro@example.jp", "page", LATER)) > len(token)


def test_every_changed_character_fails() -> None:
    token = make_token(SECRET, NOTICE_ID, "taro@example.jp", "deny", LATER)
    for position, original in enumerate(token):
        for replacement in ALPHABET:
            if replacement == original:
                continue
            changed = token[:position] + replacement + token[position + 1 :]
            assert reason(SECRET, changed) in ("malformed", "forged"), (position, replacement)


def test_unused_bits_of_the_last_character_count() -> None:
    # the last character of an unpadded base64 text may carry unused low bits; a token whose
    # only change is there decodes to the same bytes and must still be refused
    same_bytes = 0
    for length in range(1, 4):
        token = make_token(SECRET, "n", "a" * length, "confirm", LATER)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for replacement in ALPHABET:
            changed = token[:-1] + replacement
            if changed == token:
                continue
            decoded = base64.urlsafe_b64decode(changed + "=" * (-len(changed) % 4))
            if decoded == raw:
                same_bytes += 1
                assert reason(SECRET, changed) == "malformed"
    assert same_bytes > 0


def test_other_secret_is_forged() -> None:
    token = make_token(OTHER, NOTICE_ID, "taro@example.jp", "confirm", LATER)
    assert reason(SECRET, token) == "forged"


def test_changed_account_or_action_is_forged() -> None:
    token = make_token(SECRET, "n-1", "taro@example.jp", "confirm", LATER)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] = raw[0] & ~0b11 | ACTIONS.index("deny")  # confirm -> deny, MAC kept
    relabelled = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert reason(SECRET, relabelled) == "forged"
    other_account = make_token(SECRET, "n-1", "jiro@example.jp", "confirm", LATER)
    spliced = other_account[:-22] + token[-22:]  # another account's bytes with this MAC
    assert reason(SECRET, spliced) in ("forged", "malformed")


def test_expired() -> None:
    token = make_token(SECRET, NOTICE_ID, "taro@example.jp", "confirm", LATER)
    assert read_token(SECRET, token, LATER - 1).expires == LATER
    assert reason(SECRET, token, now=LATER) == "expired"
    assert reason(SECRET, token, now=LATER + 86400) == "expired"


def test_wrong_action() -> None:
    token = make_token(SECRET, NOTICE_ID, "taro@example.jp", "confirm", LATER)
    assert reason(SECRET, token, action="deny") == "wrong action"
    assert reason(SECRET, token, action="page") == "wrong action"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "not a token",
        "abc=",
        "a+b/c",
        "é" * 40,
        "A" * 30,
        "A" * 5000,
        "AAAA.BBBB",
    ],
)
def test_malformed(token: str) -> None:
    assert reason(SECRET, token) == "malformed"


def test_error_names_neither_token_nor_secret() -> None:
    token = make_token(OTHER, NOTICE_ID, "taro@example.jp", "confirm", LATER)
    with pytest.raises(TokenError) as info:
        read_token(SECRET, token, NOW)
    assert token not in str(info.value) and SECRET not in str(info.value)
    assert SECRET not in repr(web()) and SECRET not in str(web().model_dump())


def test_make_token_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="unknown link action"):
        make_token(SECRET, NOTICE_ID, "a", "delete", LATER)
    with pytest.raises(ValueError, match="out of range"):
        make_token(SECRET, NOTICE_ID, "a", "confirm", -1)
    with pytest.raises(ValueError, match="notice id"):
        make_token(SECRET, "", "a", "confirm", LATER)
    with pytest.raises(ValueError, match="255"):
        make_token(SECRET, "x" * 256, "a", "confirm", LATER)
    with pytest.raises(ValueError, match="secret"):
        make_token("", NOTICE_ID, "a", "confirm", LATER)


def test_links_of_a_notice() -> None:
    notice = make_notice(id=NOTICE_ID, account="taro@example.jp")
    found = links(web(public_url="https://mail.example.com/notice/"), notice)
    assert found is not None
    expires = int((notice.time + timedelta(days=7)).timestamp())
    assert expiry(web(), notice) == expires
    for action, url in (("confirm", found.confirm), ("deny", found.deny), ("page", found.page)):
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == (
            "https",
            "mail.example.com",
            f"/notice/{action}",
        )
        [token] = parse_qs(parts.query)["t"]
        assert read_token(SECRET, token, notice.time.timestamp(), action=action) == LinkToken(
            NOTICE_ID, "taro@example.jp", action, expires
        )
    # link_days counts from the notice's login, not from when it is sent
    short = links(web(link_days=1), notice)
    assert short is not None
    [token] = parse_qs(urlsplit(short.deny).query)["t"]
    assert read_token(SECRET, token, 0).expires == int(notice.time.timestamp()) + 86400


def test_naive_notice_time_is_utc() -> None:
    aware = make_notice(time=datetime(2020, 3, 10, 20, 12, 44, tzinfo=UTC))
    naive = make_notice(time=datetime(2020, 3, 10, 20, 12, 44))
    assert expiry(web(), aware) == expiry(web(), naive)


def test_links_off_without_url_and_secret() -> None:
    notice = make_notice()
    assert links(WebConfig(), notice) is None
    assert not WebConfig().links_on


def test_a_real_clock_reads_a_fresh_link() -> None:
    notice = make_notice(time=datetime.now(UTC))
    found = links(web(), notice)
    assert found is not None
    [token] = parse_qs(urlsplit(found.confirm).query)["t"]
    assert read_token(SECRET, token, time.time()).account == notice.account
