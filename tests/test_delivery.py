"""From a report to a delivered notice, through a real webhook sink."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook
from support import Sink

from policy_server.config import Config
from policy_server.service import keys
from policy_server.service.app import create_app

Client = TestClient[web.Request, web.Application]


def report(login: str = "alice", remote: str = "203.0.113.7", protocol: str = "imap") -> bytes:
    return json.dumps(
        {
            "login": login,
            "remote": remote,
            "protocol": protocol,
            "success": True,
            "policy_reject": False,
            "tls": False,
        }
    ).encode()


async def start(aiohttp_client: Any, make_config: Callable[..., Config], **sections: Any) -> Client:
    client: Client = await aiohttp_client(create_app(make_config(**sections)))
    return client


def deliveries(client: Client) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(client.app[keys.CONFIG].storage.path)) as conn, conn:
        return conn.execute("SELECT status, attempts, last_error FROM deliveries").fetchall()


async def wait_status(client: Client, status: str, timeout: float = 10.0) -> list[tuple[Any, ...]]:
    for _ in range(int(timeout / 0.05)):
        rows = deliveries(client)
        if rows and all(r[0] == status for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries never all {status}: {deliveries(client)}")


async def test_payload_follows_the_contract(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client, make_config, channels=[{"type": "webhook", "url": sink.url}]
    )
    await client.post("/?command=report", data=report())
    await sink.wait_for(1)  # delivered before the next one, which could otherwise carry it
    await client.post("/?command=report", data=report(remote="192.0.2.10", protocol="submission"))
    first, second = await sink.wait_for(2)
    assert set(first) >= {
        "id",
        "login",
        "reasons",
        "protocol",
        "remote",
        "country",
        "asn",
        "as_org",
        "time",
        "message",
    }
    assert first["reasons"] == ["first_use"]
    assert (first["protocol"], first["remote"], first["country"], first["asn"]) == (
        "imap",
        "203.0.113.7",
        "JP",
        64500,
    )
    assert first["as_org"] == "Example Carrier JP"
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert second["reasons"] == ["new_country", "new_provider"]
    assert (second["country"], second["asn"], second["protocol"]) == ("DE", 64520, "submission")
    # the message: Japanese by default, the SMS layout, time in Asia/Tokyo
    assert "Example Mail" in second["message"] and "SMTP" in second["message"]
    assert "ドイツ" in second["message"] and "日本時間" in second["message"]
    assert first["id"] != second["id"]
    await wait_status(client, "sent")


async def test_unknown_origin_first_use_says_unknown(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        channels=[{"type": "webhook", "url": sink.url}],
        message={"language": "en"},
    )
    await client.post("/?command=report", data=report(remote="198.18.0.9"))
    (notice,) = await sink.wait_for(1)
    assert notice["country"] is None and notice["asn"] is None
    assert "Unknown" in notice["message"]


async def test_retry_after_500_keeps_the_id(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    sink.script = [500, 500]
    client = await start(
        aiohttp_client, make_config, channels=[{"type": "webhook", "url": sink.url}]
    )
    await client.post("/?command=report", data=report())
    await sink.wait_for(3)
    assert len(set(sink.ids())) == 1
    rows = await wait_status(client, "sent")
    assert rows[0][1] == 3


async def test_dead_letter_after_400(aiohttp_client: Any, make_config: Any, sink: Sink) -> None:
    sink.script = [400]
    client = await start(
        aiohttp_client, make_config, channels=[{"type": "webhook", "url": sink.url}]
    )
    await client.post("/?command=report", data=report())
    await sink.wait_for(1)
    (row,) = await wait_status(client, "dead")
    assert row[1] == 1 and "400" in row[2]
    await asyncio.sleep(0.3)  # several poll intervals: nothing is tried again
    assert len(sink.received) == 1


async def test_expired_notice_goes_to_dead_letter(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    sink.script = [503] * 100
    client = await start(
        aiohttp_client,
        make_config,
        channels=[{"type": "webhook", "url": sink.url}],
        queue={"deadline_s": 0.3},
    )
    await client.post("/?command=report", data=report())
    (row,) = await wait_status(client, "dead")
    assert "deadline" in row[2]


async def test_signed_with_standard_webhooks(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    client = await start(
        aiohttp_client,
        make_config,
        channels=[{"type": "webhook", "url": sink.url, "secret": secret}],
    )
    await client.post("/?command=report", data=report())
    (payload,) = await sink.wait_for(1)
    headers = sink.headers[0]
    verified = Webhook(secret).verify(sink.bodies[0], headers)
    assert verified["id"] == payload["id"] == headers["webhook-id"]


async def test_every_channel_gets_the_notice(
    aiohttp_client: Any, make_config: Any, sink: Sink
) -> None:
    client = await start(
        aiohttp_client,
        make_config,
        channels=[{"type": "webhook", "url": sink.url, "name": "hook"}, {"type": "log"}],
    )
    await client.post("/?command=report", data=report())
    await sink.wait_for(1)
    rows = await wait_status(client, "sent")
    assert len(rows) == 2
