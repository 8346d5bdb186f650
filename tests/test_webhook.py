"""The webhook channel against a real HTTP sink, plus the channel factory and the log channel."""

# Japanese text uses full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook
from support import ScriptedPeer, make_notice, scripted_peer

from policy_server import __version__
from policy_server.client import Client
from policy_server.config import LogChannelConfig, MessageConfig, WebConfig, WebhookChannelConfig
from policy_server.delivery.channels.base import Channel, build_channel
from policy_server.delivery.channels.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from policy_server.delivery.channels.log import LogChannel
from policy_server.delivery.channels.webhook import MAX_RETRY_AFTER_S, WebhookChannel
from policy_server.delivery.render import RenderedMessage, Renderer
from policy_server.model import Notice, Reason
from policy_server.web.tokens import read_token

TEXT = "【Example Mailへのアクセスのお知らせ】\n■国・地域（推定）\n不明\n"
MESSAGE = RenderedMessage(subject="subject", body=TEXT, short="short", language="ja")
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
PLAIN_SECRET = "correct horse battery staple"

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def sink(aiohttp_server: AiohttpServer) -> AsyncIterator[ScriptedPeer]:
    """A webhook receiver on /notify (204 by default) that also records /elsewhere (a redirect
    target that must never be reached), and a /slow one held until teardown."""
    app = web.Application()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await request.read()
        # woken at teardown so that the server does not wait for this handler when closing
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 10)
        return web.Response(status=204)

    app.router.add_post("/slow", slow)
    peer = await scripted_peer(
        aiohttp_server, "/notify", lambda: web.Response(status=204), app, also=("/elsewhere",)
    )
    yield peer
    release.set()


@pytest.fixture
def notice() -> Notice:
    return make_notice(
        remote="::ffff:203.0.113.7",
        asn=64500,
        as_org="Example Networks, Inc.",
        prefix="203.0.113.0/24",
    )


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., Awaitable[WebhookChannel]]]:
    opened: list[WebhookChannel] = []

    async def make(url: str, **settings: Any) -> WebhookChannel:
        channel = build_channel(
            WebhookChannelConfig(type="webhook", name="hook", url=url, **settings)
        )
        assert isinstance(channel, WebhookChannel)
        await channel.open()
        opened.append(channel)
        return channel

    yield make
    for channel in opened:
        await channel.close()


async def send_expecting(
    channel: Channel, notice: Notice, error: type[DeliveryError]
) -> DeliveryError:
    with pytest.raises(error) as info:
        await channel.send(notice, MESSAGE)
    return info.value


async def test_payload_is_the_contract(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(sink.url(), headers={"Authorization": "Bearer t0ken"})
    await channel.send(notice, MESSAGE)

    [request] = sink.requests
    assert json.loads(request.body) == {
        "id": "01J8Z3K6Q2W4E5R6T7Y8U9I0OP",
        "login": "Taro@example.jp",
        "reasons": ["new_country", "new_provider"],
        "protocol": "imap",
        "remote": "::ffff:203.0.113.7",
        "country": "US",
        "asn": 64500,
        "as_org": "Example Networks, Inc.",
        "time": "2020-03-10T20:12:44+00:00",
        "protocols": ["imap"],
        "network": None,
        "network_label": None,
        "client": None,
        "travel": None,
        "origins": None,
        "earlier": [],
        "links": None,
        "message": TEXT,
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"policy-server/{__version__}"
    assert request.headers["Authorization"] == "Bearer t0ken"
    assert "webhook-signature" not in {name.lower() for name in request.headers}


async def test_the_mail_program_is_named_with_its_version(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(sink.url())
    await channel.send(replace(notice, client=Client("Thunderbird", "128.3")), MESSAGE)
    await channel.send(replace(notice, client=Client("GImap")), MESSAGE)
    first, second = (json.loads(r.body)["client"] for r in sink.requests)
    assert first == {"name": "Thunderbird", "version": "128.3"}
    assert second == {"name": "GImap", "version": None}


async def test_folded_notices_are_named_in_earlier(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    older = replace(
        notice,
        id="01J8Z3K6Q2W4E5R6T7Y8U9I0AA",
        reasons=(Reason.NEW_PROVIDER,),
        remote="192.0.2.5",
        time=datetime(2020, 3, 10, 19, 0, 1, tzinfo=UTC),
        country=None,
        asn=None,
        protocol="pop3",
        protocols=("pop3", "submission"),
    )
    channel = await make_channel(sink.url())
    await channel.send(notice, replace(MESSAGE, folded=(older,)))
    payload = json.loads(sink.requests[0].body)
    assert payload["earlier"] == [
        {
            "id": "01J8Z3K6Q2W4E5R6T7Y8U9I0AA",
            "time": "2020-03-10T19:00:01+00:00",
            "remote": "192.0.2.5",
            "country": None,
            "asn": None,
            "reasons": ["new_provider"],
            "protocols": ["pop3", "submission"],
        }
    ]
    # the notice itself is still the one sent
    assert payload["id"] == notice.id and payload["message"] == TEXT


async def test_unknown_origin_is_sent_as_nulls(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(sink.url())
    await channel.send(replace(notice, country=None, asn=None, as_org=None), MESSAGE)
    payload = json.loads(sink.requests[0].body)
    assert payload["country"] is None
    assert payload["asn"] is None
    assert payload["as_org"] is None


async def test_configured_headers_cannot_break_framing(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(
        sink.url(),
        secret=WHSEC,
        headers={"content-type": "text/plain", "Webhook-Signature": "v1,forged"},
    )
    await channel.send(notice, MESSAGE)
    request = sink.requests[0]
    assert request.headers["Content-Type"] == "application/json"
    Webhook(WHSEC).verify(request.body, request.headers)


async def test_signature_verifies_with_standardwebhooks(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(sink.url(), secret=WHSEC)
    await channel.send(notice, MESSAGE)
    await channel.send(notice, MESSAGE)

    first, second = sink.requests
    for request in (first, second):
        payload = Webhook(WHSEC).verify(request.body, request.headers)
        assert payload["message"] == TEXT
        assert request.headers["webhook-id"] == payload["id"] == notice.id
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_plain_secret_signature_is_hmac_of_exact_body(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    channel = await make_channel(sink.url(), secret=PLAIN_SECRET)
    await channel.send(notice, MESSAGE)

    request = sink.requests[0]
    signed = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
        + request.body
    )
    digest = hmac.new(PLAIN_SECRET.encode(), signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


@pytest.mark.parametrize("status", [500, 502, 408])
async def test_temporary_statuses(
    sink: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    sink.answer(status, body="upstream trouble")
    channel = await make_channel(sink.url())
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.temporary
    assert error.status == status
    assert error.retry_after is None
    assert str(status) in str(error)


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_seconds(
    sink: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    sink.answer(status, headers={"Retry-After": "7"})
    channel = await make_channel(sink.url())
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.retry_after == 7


async def test_retry_after_http_date(sink: ScriptedPeer, make_channel: Any, notice: Notice) -> None:
    when = datetime.fromtimestamp(int(time.time()) + 30, tz=UTC)
    sink.answer(503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    channel = await make_channel(sink.url())
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


@pytest.mark.parametrize(
    ("value", "expected"),
    [("99999999", MAX_RETRY_AFTER_S), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)],
)
async def test_retry_after_is_capped_and_tolerant(
    sink: ScriptedPeer, make_channel: Any, notice: Notice, value: str, expected: float | None
) -> None:
    sink.answer(429, headers={"Retry-After": value})
    channel = await make_channel(sink.url())
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.retry_after == expected


@pytest.mark.parametrize("status", [400, 404, 410, 401])
async def test_permanent_statuses(
    sink: ScriptedPeer, make_channel: Any, notice: Notice, status: int
) -> None:
    sink.answer(status, body="no such account: " + "x" * 1000)
    channel = await make_channel(sink.url())
    error = await send_expecting(channel, notice, PermanentDeliveryError)
    assert not error.temporary
    assert error.status == status
    assert str(status) in str(error)
    assert "no such account" in str(error)
    assert len(str(error)) < 300


async def test_redirect_is_not_followed(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    sink.answer(302, headers={"Location": sink.url("/elsewhere")})
    channel = await make_channel(sink.url())
    error = await send_expecting(channel, notice, PermanentDeliveryError)
    assert error.status == 302
    assert "302" in str(error)
    assert [r.path for r in sink.requests] == ["/notify"]
    assert len(sink.requests) == 1


async def test_connection_refused_is_temporary(make_channel: Any, notice: Notice) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = await make_channel(f"http://127.0.0.1:{port}/notify", secret=PLAIN_SECRET)
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status is None
    assert PLAIN_SECRET not in str(error)


async def test_timeout_is_temporary(sink: ScriptedPeer, make_channel: Any, notice: Notice) -> None:
    channel = await make_channel(sink.url("/slow"), timeout_s=0.2)
    started = time.monotonic()
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert time.monotonic() - started < 3
    assert "hook" in str(error)


async def test_secret_never_in_error_text(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    sink.answer(400, body=f"bad signature for key {PLAIN_SECRET}")
    sink.answer(500, body=PLAIN_SECRET)
    channel = await make_channel(sink.url(), secret=PLAIN_SECRET)
    permanent = await send_expecting(channel, notice, PermanentDeliveryError)
    temporary = await send_expecting(channel, notice, TemporaryDeliveryError)
    for error in (permanent, temporary):
        assert PLAIN_SECRET not in str(error)
        assert PLAIN_SECRET not in repr(error)


async def test_send_opens_a_session_if_needed(sink: ScriptedPeer, notice: Notice) -> None:
    channel = build_channel(WebhookChannelConfig(type="webhook", url=sink.url()))
    assert channel.name == "webhook"
    try:
        await channel.send(notice, MESSAGE)
    finally:
        await channel.close()
        await channel.close()
    assert len(sink.requests) == 1


def test_malformed_whsec_secret_is_refused_at_build() -> None:
    secret = "whsec_***not-base64***"
    with pytest.raises(ValueError, match="hook") as info:
        build_channel(
            WebhookChannelConfig(type="webhook", name="hook", url="http://x/", secret=secret)
        )
    assert secret not in str(info.value)


async def test_log_channel_writes_one_line(
    notice: Notice, caplog: pytest.LogCaptureFixture
) -> None:
    channel = build_channel(LogChannelConfig(type="log", name="audit"))
    assert isinstance(channel, LogChannel)
    await channel.open()
    with caplog.at_level(logging.INFO, logger="policy_server.notify"):
        await channel.send(notice, replace(MESSAGE, body="line one\nline two\r\nforged=1"))
    await channel.close()
    [record] = caplog.records
    line = record.getMessage()
    assert record.levelno == logging.INFO
    assert "\n" not in line
    assert "\r" not in line
    assert notice.id in line
    assert "login=Taro@example.jp" in line
    assert "reasons=new_country,new_provider" in line
    assert "line one\\nline two\\r\\nforged=1" in line


LINKS_SECRET = "an-hmac-key-for-the-links-0123456789"


async def test_payload_carries_the_owners_links(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    web = WebConfig.model_validate(
        {"public_url": "https://mail.example.com/notice", "secret": LINKS_SECRET}
    )
    message = Renderer(MessageConfig(language="en"), web).render(notice)
    channel = await make_channel(sink.url(), secret=WHSEC)
    await channel.send(notice, message)

    [request] = sink.requests
    payload = json.loads(request.body)
    assert set(payload["links"]) == {"confirm", "deny"}
    for action, url in payload["links"].items():
        base, _, token = url.partition("?t=")
        assert base == f"https://mail.example.com/notice/{action}"
        read = read_token(LINKS_SECRET, token, notice.time.timestamp(), action=action)
        assert (read.notice_id, read.account) == (notice.id, notice.account)
        # the message (the e-mail body) carries the same links for people
        assert url in payload["message"]
    # under the webhook signature like every other field
    Webhook(WHSEC).verify(request.body, request.headers)
    assert LINKS_SECRET not in request.body.decode()


async def test_payload_links_are_null_when_off(
    sink: ScriptedPeer, make_channel: Any, notice: Notice
) -> None:
    message = Renderer(MessageConfig(language="en"), WebConfig()).render(notice)
    channel = await make_channel(sink.url())
    await channel.send(notice, message)
    [request] = sink.requests
    payload = json.loads(request.body)
    assert "links" in payload and payload["links"] is None
    assert "?t=" not in payload["message"]
