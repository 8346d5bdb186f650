"""The e-mail channel against a real SMTP server (aiosmtpd) on 127.0.0.1, alone and in the app."""

# Japanese text uses full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import email.utils
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from support import free_port, make_notice

from policy_server.config import Config, EmailChannelConfig
from policy_server.delivery.channels.base import build_channel
from policy_server.delivery.channels.email import EmailChannel, build_message, classify, message_id
from policy_server.delivery.channels.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from policy_server.delivery.render import RenderedMessage
from policy_server.model import Notice, Recipient
from policy_server.service import keys
from policy_server.service.app import create_app

SENDER = "no-reply@mail.example.jp"
USERNAME = "relay-user"
PASSWORD = "s3cret-relay-pass"
SUBJECT = "【Example Mail】アクセスのお知らせ（アメリカ合衆国）"
BODY = (
    "【Example Mailへのアクセスのお知らせ】\n"
    "以下の国・地域からExample Mailへのアクセスがありました。\n"
    "\n"
    "■国・地域（推定）\n"
    "アメリカ合衆国\n"
)
MESSAGE = RenderedMessage(subject=SUBJECT, body=BODY, short="short text", language="ja")
OWNER = Recipient("taro@example.jp", "ja", "Asia/Tokyo")

Client = TestClient[web.Request, web.Application]


@dataclass
class Received:
    """One message the relay accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: bytes | None


@dataclass
class Relay:
    """An SMTP relay that records what it accepts and answers each stage as scripted.

    Its handler runs in the server's own thread; the test changes the script between sends.
    """

    port: int
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)
    mail_reply: str | None = None
    rcpt_reply: str | None = None
    data_reply: str | None = None
    drop_at_data: bool = False
    rcpt_attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self.lock:
            self.rcpt_attempts += 1
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.drop_at_data:
            assert server.transport is not None
            server.transport.close()
            return "250 never seen by the client"
        if self.data_reply:
            return self.data_reply
        content = envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        login = auth.login if session.authenticated and isinstance(auth, LoginPassword) else None
        assert envelope.mail_from is not None
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), message, login)
            )
        return "250 2.0.0 queued"

    def authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        with self.lock:
            self.logins.append((auth_data.login, auth_data.password))
        if auth_data.login == USERNAME.encode() and auth_data.password == PASSWORD.encode():
            return AuthResult(success=True, auth_data=auth_data)
        # a relay that quotes the credentials back: the channel must not pass them on
        refused = auth_data.password.decode()
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 credentials {refused} refused"
        )

    def rcpt_count(self) -> int:
        with self.lock:
            return self.rcpt_attempts


@pytest.fixture
def relay() -> Iterator[Relay]:
    handler = Relay(port=free_port())
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=handler.port,
        authenticator=handler.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def notice() -> Notice:
    return make_notice()


def channel_for(port: int, **settings: Any) -> EmailChannel:
    values: dict[str, Any] = {
        "type": "email",
        "name": "mail",
        "host": "127.0.0.1",
        "port": port,
        "sender": SENDER,
        "timeout_s": 2.0,
    }
    values.update(settings)
    channel = build_channel(EmailChannelConfig(**values))
    assert isinstance(channel, EmailChannel)
    return channel


async def send_expecting(
    channel: EmailChannel, notice: Notice, error: type[DeliveryError]
) -> DeliveryError:
    with pytest.raises(error) as info:
        await channel.send(notice, MESSAGE, OWNER)
    return info.value


def body_text(message: EmailMessage) -> str:
    content = message.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


# -- one message --------------------------------------------------------------------------


async def test_delivered_message_reads_back_in_japanese(relay: Relay, notice: Notice) -> None:
    channel = channel_for(relay.port)
    before = datetime.now(UTC).replace(microsecond=0)
    await channel.send(notice, MESSAGE, OWNER)

    [received] = relay.messages
    mail = received.message
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["taro@example.jp"]
    assert received.login is None
    assert mail["From"] == SENDER
    assert mail["To"] == "taro@example.jp"
    assert mail["Subject"] == SUBJECT
    assert body_text(mail) == BODY
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["X-Auto-Response-Suppress"] == "All"
    assert mail["Content-Language"] == "ja"
    sent_at = email.utils.parsedate_to_datetime(mail["Date"])
    assert sent_at.tzinfo is not None
    assert before <= sent_at <= datetime.now(UTC)
    assert mail["Message-ID"] == "<01J8Z3K6Q2W4E5R6T7Y8U9I0OP@mail.example.jp>"


async def test_message_id_is_stable_per_notice(relay: Relay, notice: Notice) -> None:
    channel = channel_for(relay.port)
    other = replace(notice, id="01J8Z3K6Q2W4E5R6T7Y8U9I0ZZ")
    await channel.send(notice, MESSAGE, OWNER)
    await channel.send(notice, MESSAGE, OWNER)
    await channel.send(other, MESSAGE, OWNER)

    first, again, third = (r.message["Message-ID"] for r in relay.messages)
    assert first == again == message_id(notice, SENDER)
    assert third == message_id(other, SENDER)
    assert third != first


async def test_recipient_address_not_login_is_used(relay: Relay, notice: Notice) -> None:
    channel = channel_for(relay.port)
    await channel.send(notice, MESSAGE, Recipient("owner@home.example", "en", None))
    [received] = relay.messages
    assert received.rcpt_tos == ["owner@home.example"]
    assert received.message["To"] == "owner@home.example"


@pytest.mark.parametrize("recipient", [None, Recipient("", "ja", None)])
async def test_no_address_is_permanent_and_sends_nothing(
    relay: Relay, notice: Notice, recipient: Recipient | None
) -> None:
    channel = channel_for(relay.port)
    with pytest.raises(PermanentDeliveryError, match="email mail: no recipient address"):
        await channel.send(notice, MESSAGE, recipient)
    assert relay.messages == []
    assert relay.rcpt_count() == 0


# -- SMTP AUTH ----------------------------------------------------------------------------


async def test_auth_with_configured_credentials(relay: Relay, notice: Notice) -> None:
    channel = channel_for(relay.port, username=USERNAME, password=PASSWORD)
    await channel.send(notice, MESSAGE, OWNER)
    assert relay.logins == [(USERNAME.encode(), PASSWORD.encode())]
    [received] = relay.messages
    assert received.login == USERNAME.encode()


async def test_no_auth_without_username(relay: Relay, notice: Notice) -> None:
    channel = channel_for(relay.port)
    await channel.send(notice, MESSAGE, OWNER)
    assert relay.logins == []
    assert len(relay.messages) == 1


async def test_refused_login_is_temporary_and_hides_the_password(
    relay: Relay, notice: Notice
) -> None:
    wrong = "wr0ng-relay-pass"
    channel = channel_for(relay.port, username=USERNAME, password=wrong)
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status == 535
    assert "535" in str(error)
    assert "email mail" in str(error)
    # the relay quoted the password back; the error shows it masked
    assert "***" in str(error)
    assert wrong not in str(error)
    assert wrong not in repr(error)
    # the client may try another mechanism after the first refusal; each carried the same login
    assert relay.logins
    assert set(relay.logins) == {(USERNAME.encode(), wrong.encode())}
    assert relay.messages == []


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "reply", "expected", "status"),
    [
        ("rcpt", "451 4.3.0 mailbox busy, try later", TemporaryDeliveryError, 451),
        ("rcpt", "452 4.2.2 mailbox full", TemporaryDeliveryError, 452),
        ("data", "451 4.3.0 local error in processing", TemporaryDeliveryError, 451),
        ("rcpt", "550 5.1.1 no such user here", PermanentDeliveryError, 550),
        ("data", "554 5.7.1 message refused", PermanentDeliveryError, 554),
        ("mail", "553 5.7.1 sender not allowed", PermanentDeliveryError, 553),
    ],
)
async def test_server_replies_are_classified(
    relay: Relay,
    notice: Notice,
    stage: str,
    reply: str,
    expected: type[DeliveryError],
    status: int,
) -> None:
    setattr(relay, f"{stage}_reply", reply)
    channel = channel_for(relay.port)
    error = await send_expecting(channel, notice, expected)
    assert type(error) is expected
    assert error.status == status
    assert str(status) in str(error)
    assert reply.split(" ", 2)[2] in str(error)
    assert str(error).startswith("email mail: ")
    assert relay.messages == []


async def test_connection_dropped_during_data_is_temporary(relay: Relay, notice: Notice) -> None:
    relay.drop_at_data = True
    channel = channel_for(relay.port)
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status is None
    assert relay.messages == []


@contextlib.asynccontextmanager
async def raw_server(
    greet: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A bare TCP server on 127.0.0.1 that runs ``greet`` on each connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await greet(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_server_closing_at_once_is_temporary(notice: Notice) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    async with raw_server(close_at_once) as port:
        channel = channel_for(port)
        error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert "email mail" in str(error)


async def test_busy_greeting_is_temporary(notice: Notice) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 too busy, come back later\r\n")
        await writer.drain()

    async with raw_server(busy) as port:
        channel = channel_for(port)
        error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status == 421
    assert "too busy" in str(error)


async def test_silent_server_times_out_as_temporary(notice: Notice) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(silent) as port:
        channel = channel_for(port, timeout_s=0.3)
        started = time.monotonic()
        await send_expecting(channel, notice, TemporaryDeliveryError)
        assert time.monotonic() - started < 2


async def test_nothing_listening_is_temporary(notice: Notice) -> None:
    channel = channel_for(free_port(), username=USERNAME, password=PASSWORD)
    error = await send_expecting(channel, notice, TemporaryDeliveryError)
    assert error.status is None
    assert "email mail" in str(error)
    assert PASSWORD not in str(error)


# -- the pure parts -----------------------------------------------------------------------


def test_message_id_keeps_safe_characters_and_the_sender_domain(notice: Notice) -> None:
    assert (
        message_id(replace(notice, id="a/b c<d>e.f-g_h"), SENDER) == "<abcde.f-g_h@mail.example.jp>"
    )
    assert message_id(replace(notice, id="<>/"), SENDER) == "<notice@mail.example.jp>"
    assert message_id(notice, "") == "<01J8Z3K6Q2W4E5R6T7Y8U9I0OP@localhost>"
    assert message_id(notice, "no-reply@") == "<01J8Z3K6Q2W4E5R6T7Y8U9I0OP@localhost>"


def test_build_message_uses_the_given_time(notice: Notice) -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    mail = build_message(notice, MESSAGE, SENDER, "taro@example.jp", now=now)
    assert email.utils.parsedate_to_datetime(mail["Date"]) == now
    assert mail["Message-ID"] == message_id(notice, SENDER)
    assert mail["Subject"] == SUBJECT
    # headers are encoded for transport: the wire form is ASCII
    assert mail.as_bytes().split(b"\r\n\r\n", 1)[0].isascii()


def test_classify_mixed_recipient_codes_is_permanent() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(451, "later", "a@example.jp"),
            aiosmtplib.SMTPRecipientRefused(550, "no such user", "b@example.jp"),
        ]
    )
    error = classify(refused, "email mail", ())
    assert isinstance(error, PermanentDeliveryError)
    assert error.status == 451
    empty = classify(aiosmtplib.SMTPRecipientsRefused([]), "email mail", ())
    assert isinstance(empty, PermanentDeliveryError)
    assert empty.status is None


def test_classify_masks_secrets() -> None:
    exc = aiosmtplib.SMTPResponseException(554, f"rejected {PASSWORD}")
    error = classify(exc, "email mail", (PASSWORD,))
    assert isinstance(error, PermanentDeliveryError)
    assert PASSWORD not in str(error)
    assert "rejected ***" in str(error)


# -- through the app: report, queue, worker, relay ----------------------------------------


def report(login: str, remote: str = "203.0.113.7") -> bytes:
    return json.dumps(
        {
            "login": login,
            "remote": remote,
            "protocol": "imap",
            "success": True,
            "policy_reject": False,
            "tls": True,
        }
    ).encode()


def email_channel(port: int) -> dict[str, Any]:
    return {
        "type": "email",
        "name": "mail",
        "host": "127.0.0.1",
        "port": port,
        "sender": SENDER,
        "timeout_s": 2,
    }


def deliveries(client: Client) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(client.app[keys.CONFIG].storage.path)) as conn, conn:
        return conn.execute(
            "SELECT notice_id, status, attempts, last_error FROM deliveries ORDER BY notice_id"
        ).fetchall()


async def wait_rows(
    client: Client,
    ready: Callable[[list[tuple[Any, ...]]], bool],
    timeout: float = 5.0,
) -> list[tuple[Any, ...]]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        rows = deliveries(client)
        if rows and ready(rows):
            return rows
        await asyncio.sleep(0.01)
    raise AssertionError(f"deliveries never reached the state: {deliveries(client)}")


async def test_outage_is_logged_once_and_every_notice_arrives_once(
    relay: Relay,
    aiohttp_client: Any,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="policy_server.worker")
    relay.rcpt_reply = "451 4.3.0 relay is being maintained"
    logins = ["taro@example.jp", "Hanako@Example.jp", "jiro@example.net", "saburo@example.org"]
    client: Client = await aiohttp_client(
        create_app(make_config(channels=[email_channel(relay.port)]))
    )
    for login in logins:
        response = await client.post("/?command=report", data=report(login))
        assert response.status == 200

    # every notice failed at least twice, and none is being tried right now
    await wait_rows(
        client,
        lambda rows: (
            len(rows) == len(logins)
            and all(status == "queued" and attempts >= 2 for _, status, attempts, _ in rows)
        ),
    )
    assert relay.messages == []
    relay.rcpt_reply = None

    rows = await wait_rows(client, lambda rows: all(row[1] == "sent" for row in rows))
    await asyncio.sleep(0.2)  # several poll intervals: nothing is sent again
    assert len(relay.messages) == len(logins)
    assert sorted(rcpt for r in relay.messages for rcpt in r.rcpt_tos) == sorted(logins)
    assert {r.message["Message-ID"] for r in relay.messages} == {
        f"<{notice_id}@mail.example.jp>" for notice_id, *_ in rows
    }
    assert all(r.message["Subject"].startswith("【Example Mail】") for r in relay.messages)

    worker_lines = [r.getMessage() for r in caplog.records if r.name == "policy_server.worker"]
    failing = [line for line in worker_lines if "is failing" in line]
    assert len(failing) == 1, worker_lines
    assert "channel mail is failing" in failing[0]
    assert "451" in failing[0]
    assert sum("channel mail delivers again" in line for line in worker_lines) == 1
    # the single line stood for many failed attempts
    assert relay.rcpt_count() >= 2 * len(logins) + len(logins)


async def test_refused_recipient_ends_dead_with_the_reason(
    relay: Relay, aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    relay.rcpt_reply = "550 5.1.1 mailbox unavailable"
    client: Client = await aiohttp_client(
        create_app(make_config(channels=[email_channel(relay.port)]))
    )
    response = await client.post("/?command=report", data=report("taro@example.jp"))
    assert response.status == 200

    [(_, status, attempts, error)] = await wait_rows(
        client, lambda rows: all(row[1] != "queued" and row[1] != "sending" for row in rows)
    )
    assert (status, attempts) == ("dead", 1)
    assert "email mail" in error
    assert "550" in error
    assert "mailbox unavailable" in error
    await asyncio.sleep(0.2)  # several poll intervals: nothing is tried again
    assert relay.rcpt_count() == 1
    assert relay.messages == []


def test_sender_must_be_a_bare_address() -> None:
    from policy_server.config import ConfigError, config_from_mapping

    with pytest.raises(ConfigError, match="bare address"):
        config_from_mapping({"channels": [{"type": "email", "sender": "Example <n@example.jp>"}]})
