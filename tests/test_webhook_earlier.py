"""Notices folded into one delivery are named in the webhook payload (``earlier``), not only in
the rendered text: through the service, its worker and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from stores import Backend
from support import Sink
from test_delivery import report

from policy_server.config import Config
from policy_server.service.app import create_app
from policy_server.store.base import DeliveryState

Client = TestClient[web.Request, web.Application]


async def folded_state(backend: Backend, notice_id: str, timeout: float = 10.0) -> DeliveryState:
    """The one delivery of ``notice_id`` once the worker has marked it folded (bounded)."""
    store = await backend.open()
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            found = await store.notice_detail(notice_id)
            assert found is not None, notice_id
            (state,) = found[1]
            if state["status"] == "folded" or loop.time() > until:
                return state
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_a_delivery_names_the_notices_folded_into_it(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink, backend: Backend
) -> None:
    config = make_config(
        storage=backend.config.model_dump(),
        # one notice per account and channel in 2 s: what comes in between waits, and is folded
        delivery={"hold_s": 0, "throttle": [{"max": 1, "window_s": 2.0}]},
        message={"language": "en"},
        channels=[{"type": "webhook", "name": "hook", "url": sink.url}],
    )
    client: Client = await aiohttp_client(create_app(config))

    async def post(remote: str) -> datetime:
        before = datetime.now().astimezone()
        response = await client.post("/?command=report", data=report(remote=remote))
        assert response.status == 200
        return before

    await post("203.0.113.7")  # first use: sent at once
    (first,) = await sink.wait_for(1)
    assert first["earlier"] == []
    us_reported = await post("198.51.100.9")  # held back by the limit...
    await post("192.0.2.5")  # ...and this one, which goes out when the limit allows
    second = (await sink.wait_for(2))[1]

    assert second["remote"] == "192.0.2.5" and second["country"] == "DE"
    (earlier,) = second["earlier"]
    assert set(earlier) == {"id", "time", "remote", "country", "asn", "reasons", "protocols"}
    assert {k: earlier[k] for k in ("remote", "country", "asn", "reasons", "protocols")} == {
        "remote": "198.51.100.9",
        "country": "US",
        "asn": 64510,
        "reasons": ["new_country", "new_provider"],
        "protocols": ["imap"],
    }
    # the time of that login, in the same ISO 8601 form as the payload's own "time"
    when = datetime.fromisoformat(earlier["time"])
    assert when.utcoffset() is not None
    assert us_reported - timedelta(seconds=1) <= when <= datetime.fromisoformat(second["time"])
    # the id is the folded notice's own: the store says it was folded into this delivery
    assert earlier["id"] not in (first["id"], second["id"])
    state = await folded_state(backend, earlier["id"])
    assert (state["status"], state["folded_into"]) == ("folded", second["id"])
    # the text says the same for people
    assert "United States" in second["message"]
