"""The SMS channel against a real HTTP gateway on 127.0.0.1, its config checks, and the worker."""

# Japanese text uses full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support import ScriptedPeer, free_port, make_notice, scripted_peer

from policy_server import __version__
from policy_server.config import Config, ConfigError, SmsChannelConfig, config_from_mapping
from policy_server.delivery.channels.base import build_channel
from policy_server.delivery.channels.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from policy_server.delivery.channels.sms import SmsChannel, fill
from policy_server.delivery.render import RenderedMessage
from policy_server.model import Notice, Recipient
from policy_server.service import keys
from policy_server.service.app import create_app
from policy_server.store.base import Contact

SHORT = (
    "【Example Mail】2020/03/11 05:12:44（日本時間）にアメリカ合衆国からIMAPでアクセスが"
    "ありました。\nお心当たりがない場合はパスワードを変更してください：https://mail.example.jp/help\n"
)
MESSAGE = RenderedMessage(subject="subject", body="the long body", short=SHORT, language="ja")
PHONE = "+819012345678"
OWNER = Recipient(PHONE, "ja", "Asia/Tokyo")
TOKEN = "sms-gw-t0ken-123"

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def gateway(aiohttp_server: AiohttpServer) -> ScriptedPeer:
    """An SMS gateway on /send that accepts (202) unless scripted otherwise."""
    return await scripted_peer(
        aiohttp_server, "/send", lambda: web.json_response({"status": "accepted"}, status=202)
    )


@pytest.fixture
def notice() -> Notice:
    return make_notice()


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., Awaitable[SmsChannel]]]:
    opened: list[SmsChannel] = []

    async def make(url: str, **settings: Any) -> SmsChannel:
        settings.setdefault("quiet_hours", "")
        channel = build_channel(SmsChannelConfig(type="sms", name="sms", url=url, **settings))
        assert isinstance(channel, SmsChannel)
        await channel.open()
        opened.append(channel)
        return channel

    yield make
    for channel in opened:
        await channel.close()


async def send_expecting(
    channel: SmsChannel, notice: Notice, error: type[DeliveryError]
) -> DeliveryError:
    with pytest.raises(error) as info:
        await channel.send(notice, MESSAGE, OWNER)
    return info.value


# -- the request --------------------------------------------------------------------------


async def test_default_json_body(gateway: ScriptedPeer, make_channel: Any, notice: Notice) -> None:
    channel = await make_channel(gateway.url())
    await channel.send(notice, MESSAGE, OWNER)

    [call] = gateway.requests
    assert call.method == "POST"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"] == f"policy-server/{__version__}"
    assert json.loads(call.body) == {"to": PHONE, "text": SHORT.strip()}
    # Japanese is sent as UTF-8, not as \\u escapes
    assert "アクセス".encode() in call.body


async def test_json_body_from_every_placeholder(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    body = {
        "destination": "{phone}",
        "message": "{text}",
        "reference": "notice-{id}",
        "tag": "{login} {{literal}}",
        "sender": "ExampleMail",
    }
    channel = await make_channel(gateway.url(), body=body, method="PUT")
    await channel.send(notice, MESSAGE, OWNER)

    [call] = gateway.requests
    assert call.method == "PUT"
    assert json.loads(call.body) == {
        "destination": PHONE,
        "message": SHORT.strip(),
        "reference": "notice-01J8Z3K6Q2W4E5R6T7Y8U9I0OP",
        "tag": "Taro@example.jp {literal}",
        "sender": "ExampleMail",
    }


async def test_form_body(gateway: ScriptedPeer, make_channel: Any, notice: Notice) -> None:
    tricky = RenderedMessage("s", "b", " 100% sure? a&b=c+d 日本 ", "ja")
    channel = await make_channel(
        gateway.url(), body_format="form", body={"to": "{phone}", "msg": "{text}", "ref": "{id}"}
    )
    await channel.send(notice, MESSAGE, OWNER)
    await channel.send(notice, tricky, OWNER)

    first, second = gateway.requests
    assert first.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert first.body.isascii()
    assert urllib.parse.parse_qs(first.body.decode("ascii"), strict_parsing=True) == {
        "to": [PHONE],
        "msg": [SHORT.strip()],
        "ref": [notice.id],
    }
    # characters that mean something in a form arrive as they were written
    fields = urllib.parse.parse_qs(second.body.decode("ascii"), strict_parsing=True)
    assert fields["msg"] == ["100% sure? a&b=c+d 日本"]
    assert fields["to"] == [PHONE]


async def test_get_sends_the_fields_as_query(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(
        gateway.url(), method="GET", body={"to": "{phone}", "text": "{text}", "user": "{login}"}
    )
    await channel.send(notice, MESSAGE, OWNER)

    [call] = gateway.requests
    assert call.method == "GET"
    assert call.body == b""
    assert call.query == {"to": PHONE, "text": SHORT.strip(), "user": "Taro@example.jp"}
    assert "Content-Type" not in call.headers


@pytest.mark.parametrize(
    ("auth_header", "name", "value"),
    [
        (f"Authorization: Bearer {TOKEN}", "Authorization", f"Bearer {TOKEN}"),
        (f"Bearer {TOKEN}", "Authorization", f"Bearer {TOKEN}"),
        (f"X-Api-Key: {TOKEN}", "X-Api-Key", TOKEN),
    ],
)
async def test_auth_header_is_sent(
    gateway: ScriptedPeer,
    make_channel: Any,
    notice: Notice,
    auth_header: str,
    name: str,
    value: str,
) -> None:
    channel = await make_channel(
        gateway.url(), auth_header=auth_header, headers={"X-Tenant": "example"}
    )
    await channel.send(notice, MESSAGE, OWNER)
    [call] = gateway.requests
    assert call.headers[name] == value
    assert call.headers["X-Tenant"] == "example"


async def test_configured_headers_cannot_change_the_body_type(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(gateway.url(), headers={"content-type": "text/plain"})
    await channel.send(notice, MESSAGE, OWNER)
    [call] = gateway.requests
    assert call.headers["Content-Type"] == "application/json"
    assert json.loads(call.body)["to"] == PHONE


@pytest.mark.parametrize("recipient", [None, Recipient("", "ja", None)])
async def test_no_phone_is_permanent_and_calls_nothing(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice, recipient: Recipient | None
) -> None:
    channel = await make_channel(gateway.url())
    with pytest.raises(PermanentDeliveryError, match="sms sms: no phone number"):
        await channel.send(notice, MESSAGE, recipient)
    assert gateway.requests == []


async def test_send_opens_a_session_if_needed(gateway: ScriptedPeer, notice: Notice) -> None:
    channel = build_channel(SmsChannelConfig(type="sms", url=gateway.url(), quiet_hours=""))
    assert channel.name == "sms"
    assert channel.recipient_kind == "phone"
    try:
        await channel.send(notice, MESSAGE, OWNER)
    finally:
        await channel.close()
        await channel.close()
    assert len(gateway.requests) == 1


# -- the answer ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_is_delivered(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    gateway.answer(status)
    channel = await make_channel(gateway.url())
    await channel.send(notice, MESSAGE, OWNER)
    assert len(gateway.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_temporary_statuses(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    gateway.answer(status, body="gateway overloaded")
    channel = await make_channel(gateway.url())
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status == status
    assert error.retry_after is None
    assert f"sms sms: HTTP {status}" in str(error)
    assert "gateway overloaded" in str(error)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    gateway.answer(status, headers={"Retry-After": "42"})
    channel = await make_channel(gateway.url())
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.retry_after == 42


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_permanent_statuses(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    gateway.answer(status, body="invalid destination number")
    channel = await make_channel(gateway.url())
    error = await send_expecting(channel, notice, PermanentDeliveryError)
    assert error.status == status
    assert f"HTTP {status}" in str(error)
    assert "invalid destination number" in str(error)


async def test_auth_header_never_in_error_text(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    gateway.answer(401, body=f"token Bearer {TOKEN} is not valid")
    gateway.answer(500, body=f"internal error handling Bearer {TOKEN}")
    channel = await make_channel(gateway.url(), auth_header=f"Authorization: Bearer {TOKEN}")
    permanent = await send_expecting(channel, notice, PermanentDeliveryError)
    temporary = await send_expecting(channel, notice, TemporaryDeliveryError)
    for error in (permanent, temporary):
        assert TOKEN not in str(error)
        assert TOKEN not in repr(error)
        assert "***" in str(error)


@pytest.mark.parametrize(
    ("url_auth", "settings"),
    [("gw-user:gw-pass-77@", {}), ("", {"auth_header": f"X-Api-Key: {TOKEN}"})],
)
async def test_connection_refused_is_temporary(
    make_channel: Any, notice: Notice, url_auth: str, settings: dict[str, str]
) -> None:
    channel = await make_channel(f"http://{url_auth}127.0.0.1:{free_port()}/send", **settings)
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status is None
    assert str(error).startswith("sms sms: ")
    assert TOKEN not in str(error)
    assert "gw-pass-77" not in str(error)


async def test_credentials_in_the_url_are_sent_and_hidden(
    gateway: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    url = gateway.url().replace("http://", "http://gw-user:gw-pass-77@")
    gateway.answer(403, body="password gw-pass-77 has expired")
    channel = await make_channel(url)
    error = await send_expecting(channel, notice, PermanentDeliveryError)
    [call] = gateway.requests
    expected = base64.b64encode(b"gw-user:gw-pass-77").decode()
    assert call.headers["Authorization"] == f"Basic {expected}"
    assert "gw-pass-77" not in str(error)
    assert "password *** has expired" in str(error)


@pytest.mark.parametrize(
    "settings",
    [{"auth_header": f"Bearer {TOKEN}"}, {"headers": {"authorization": f"Bearer {TOKEN}"}}],
)
def test_url_credentials_and_authorization_header_are_refused_at_build(
    settings: dict[str, Any],
) -> None:
    config = SmsChannelConfig(
        type="sms", name="gw", url="https://gw-user:gw-pass-77@sms.example.net/send", **settings
    )
    with pytest.raises(ValueError, match="sms gw") as info:
        build_channel(config)
    assert TOKEN not in str(info.value)
    assert "gw-pass-77" not in str(info.value)


# -- the config ---------------------------------------------------------------------------


def sms_config(**settings: Any) -> Config:
    return config_from_mapping(
        {"channels": [{"type": "sms", "url": "https://sms.example.net/send", **settings}]}
    )


@pytest.mark.parametrize(
    "template",
    ["{phone.__class__}", "{text.__class__.__init__}", "{phone[0]}", "{text!r}", "{text:>200}"],
)
def test_config_refuses_anything_but_plain_placeholders(template: str) -> None:
    with pytest.raises(ConfigError) as info:
        sms_config(body={"to": template, "text": "{text}"})
    [(path, message)] = info.value.errors
    assert path == "channels[0].body"
    assert "body.to" in message
    assert "unknown placeholder" in message


def test_config_refuses_unknown_names_and_stray_braces() -> None:
    with pytest.raises(ConfigError, match="unknown placeholder"):
        sms_config(body={"to": "{phone}", "text": "{text} {password}"})
    with pytest.raises(ConfigError, match="literal braces"):
        sms_config(body={"to": "{phone", "text": "{text}"})


def test_config_refuses_a_body_without_text() -> None:
    with pytest.raises(ConfigError) as info:
        sms_config(body={"to": "{phone}", "ref": "{id}"})
    [(path, message)] = info.value.errors
    assert path == "channels[0].body"
    assert "{text}" in message


def test_config_defaults() -> None:
    config = sms_config()
    [channel] = config.channels
    assert isinstance(channel, SmsChannelConfig)
    assert channel.name == "sms-0"
    assert channel.quiet_hours == "23:00-07:00"
    assert channel.recipient_fallback == "none"
    assert channel.body == {"to": "{phone}", "text": "{text}"}


def test_fill_does_not_expand_placeholders_inside_values() -> None:
    values = {"phone": PHONE, "text": "{phone} {id.__class__}", "id": "n-1", "login": "taro"}
    assert fill({"text": "{text}", "to": "{phone}"}, values) == {
        "text": "{phone} {id.__class__}",
        "to": PHONE,
    }


# -- through the app: recipients from the contacts table ----------------------------------


def report(login: str) -> bytes:
    return json.dumps(
        {
            "login": login,
            "remote": "198.51.100.20",
            "protocol": "imap",
            "success": True,
            "policy_reject": False,
            "tls": True,
        }
    ).encode()


def deliveries(client: Client) -> dict[str, tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(client.app[keys.CONFIG].storage.path)) as conn, conn:
        rows = conn.execute(
            "SELECT account, status, attempts, last_error FROM deliveries"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


async def test_account_without_phone_is_undeliverable_and_one_with_gets_the_sms(
    gateway: ScriptedPeer, aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    channel = {
        "type": "sms",
        "name": "sms",
        "url": gateway.url(),
        "quiet_hours": "",
        "recipient_fallback": "none",
    }
    client: Client = await aiohttp_client(
        create_app(make_config(channels=[channel], message={"language": "en"}))
    )
    store = client.app[keys.STORE]
    # hanako has a contact row but no phone: an address is not a phone number
    contacts = [
        Contact("taro", phone=PHONE, language="ja", timezone="Asia/Tokyo"),
        Contact("hanako", email="hanako@example.jp"),
    ]
    assert await store.upsert_contacts(contacts, time.time()) == 2
    for login in ("taro", "hanako", "jiro"):
        response = await client.post("/?command=report", data=report(login))
        assert response.status == 200

    until = time.monotonic() + 5
    while time.monotonic() < until:
        rows = deliveries(client)
        if len(rows) == 3 and all(r[0] not in ("queued", "sending") for r in rows.values()):
            break
        await asyncio.sleep(0.01)
    assert rows["taro"][:2] == ("sent", 1)
    for account in ("hanako", "jiro"):
        status, attempts, error = rows[account]
        assert (status, attempts) == ("undeliverable", 1)
        assert error == "no phone address for this account"

    await asyncio.sleep(0.2)  # several poll intervals: nothing is tried again
    assert deliveries(client) == rows
    [call] = gateway.requests
    sms = json.loads(call.body)
    assert sms["to"] == PHONE
    # rendered in the contact's language and time zone
    assert sms["text"].startswith("【Example Mail】2")
    assert "日本時間" in sms["text"]
    assert "アメリカ合衆国" in sms["text"]
