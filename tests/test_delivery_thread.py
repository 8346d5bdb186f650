"""``serve``'s delivery worker runs on a thread and loop of its own: it delivers from there with
a store connection and channels of its own, wakes at once for a new notice (coalesced), takes
reloaded templates, is loud and not ready when it dies, and stops cleanly: deliveries in flight
get ``stop_timeout_s``, what is left is put back, its loop closes and the thread is joined."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support import Sink
from test_claims import until
from test_delivery import deliveries, report, wait_status
from test_health import ready

from policy_server.config import Config
from policy_server.delivery.thread import DeliveryThread
from policy_server.delivery.worker import Worker
from policy_server.model import Notice, Recipient
from policy_server.service import eventloop, keys
from policy_server.service.app import create_app, reload_templates

Client = TestClient[web.Request, web.Application]


def hook(sink: Sink) -> list[dict[str, Any]]:
    return [{"type": "webhook", "name": "hook", "url": sink.url}]


async def start(aiohttp_client: Any, config: Config) -> tuple[Client, DeliveryThread, Worker]:
    client: Client = await aiohttp_client(create_app(config))
    delivery = client.app[keys.DELIVERY]
    worker = client.app[keys.WORKER]
    assert delivery.worker is worker
    return client, delivery, worker


async def test_deliveries_are_made_on_a_thread_and_loop_of_their_own(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    client, delivery, worker = await start(aiohttp_client, make_config(channels=hook(sink)))
    app = client.app
    answering = asyncio.get_running_loop()
    assert delivery.loop is not None and delivery.loop is not answering
    expected = "asyncio" if os.environ.get(eventloop.LOOP_ENV) == "asyncio" else "uvloop"
    assert eventloop.loop_name(delivery.loop) == expected
    # resources of its own: neither the app's store nor its channels
    assert worker._store is not app[keys.STORE]
    assert worker._channels["hook"] is not app[keys.CHANNELS]["hook"]
    # the thread that sends, seen from inside the worker's channel
    senders: list[tuple[int, asyncio.AbstractEventLoop]] = []
    channel = worker._channels["hook"]
    send = channel.send

    async def recording(notice: Notice, message: Any, recipient: Recipient | None = None) -> None:
        senders.append((threading.get_ident(), asyncio.get_running_loop()))
        await send(notice, message, recipient)

    channel.send = recording  # type: ignore[method-assign]
    answer = await client.post("/?command=report", data=report(login="alice"))
    assert answer.status == 200
    assert (await sink.wait_for(1))[0]["login"] == "alice"
    assert senders == [(delivery._thread.ident, delivery.loop)]
    assert senders[0][0] != threading.get_ident()
    assert (await wait_status(client, "sent"))[0][0] == "sent"
    assert (await ready(client.app[keys.CONFIG]))[0] == 200


async def test_a_new_notice_wakes_the_worker_without_waiting_for_its_poll(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    # a poll of a minute: only the wake from the report can make these deliveries quick
    config = make_config(queue={"poll_interval_s": 60.0}, channels=hook(sink))
    client, _delivery, worker = await start(aiohttp_client, config)
    await until(lambda: worker.owner, "the worker started")
    for count, login in enumerate(("alice", "bob", "carol"), start=1):
        started = time.monotonic()
        await client.post("/?command=report", data=report(login=login))
        assert (await sink.wait_for(count, timeout=10.0))[-1]["login"] == login
        assert time.monotonic() - started < 10.0


def test_wakes_from_another_thread_cross_once_until_the_loop_handles_them(
    make_config: Callable[..., Config],
) -> None:
    """Each queued notice calls ``wake``: many calls before the worker's loop got to the first
    cost one ``call_soon_threadsafe``, and the event is set on the worker's own loop."""

    class CountingLoop(asyncio.SelectorEventLoop):
        crossings = 0

        def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
            self.crossings += 1
            return super().call_soon_threadsafe(callback, *args, context=context)

    loop = CountingLoop()
    hold, held = threading.Event(), threading.Event()
    thread = threading.Thread(target=loop.run_forever, name="test-worker-loop")
    thread.start()
    try:

        async def build() -> Worker:
            return Worker(None, {}, None, make_config())  # type: ignore[arg-type]

        worker = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
        # the worker's loop is held up: the wakes pile up

        def block() -> None:
            held.set()
            hold.wait(10)

        loop.call_soon_threadsafe(block)
        assert held.wait(10)
        before = loop.crossings
        for _ in range(1000):
            worker.wake()
        assert loop.crossings == before + 1
        assert not worker._wakeup.is_set()
        hold.set()
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(worker._wakeup.wait(), 10), loop).result(
            10
        )
        # handled: the next wake crosses again
        before = loop.crossings
        worker.wake()
        worker.wake()
        assert loop.crossings == before + 1
    finally:
        hold.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_reloaded_templates_reach_the_threaded_worker(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    (templates / "en").mkdir(parents=True)
    notice = templates / "en" / "notice.txt"
    notice.write_text("old words for {{ login }}\n", encoding="utf-8")
    config = make_config(
        message={"language": "en", "templates_dir": str(templates)}, channels=hook(sink)
    )
    client, _delivery, worker = await start(aiohttp_client, config)
    in_use = worker._renderer
    notice.write_text("new words for {{ login }}\n", encoding="utf-8")
    assert reload_templates(client.app) is True
    # handed over on the worker's loop, not assigned from this one
    await until(lambda: worker._renderer is not in_use, "the worker took the new templates")
    await client.post("/?command=report", data=report(login="dave"))
    assert (await sink.wait_for(1))[0]["message"] == "new words for dave\n"


async def test_shutdown_waits_for_a_delivery_in_flight_then_closes_the_thread(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    sink.delay = 0.5  # slow, but well inside stop_timeout_s
    config = make_config(queue={"stop_timeout_s": 20.0}, channels=hook(sink))
    client, delivery, worker = await start(aiohttp_client, config)
    await client.post("/?command=report", data=report())
    await sink.wait_for(1)  # the delivery is in flight
    await client.close()
    assert deliveries(client)[0][:2] == ("sent", 1)
    assert not delivery._thread.is_alive()
    assert delivery.loop is not None and delivery.loop.is_closed()
    assert not delivery.running
    assert worker._store._writer is None  # type: ignore[attr-defined]  # the thread's store closed


async def test_shutdown_puts_back_what_is_still_in_flight_after_the_stop_timeout(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    sink.delay = 30.0  # the receiver hangs
    config = make_config(queue={"stop_timeout_s": 0.3}, channels=hook(sink))
    client, delivery, _worker = await start(aiohttp_client, config)
    await client.post("/?command=report", data=report())
    await sink.wait_for(1)
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 10.0  # not the receiver's 30 s
    assert [row[:2] for row in deliveries(client)] == [("queued", 0)]
    assert not delivery._thread.is_alive()


async def test_a_worker_task_that_dies_is_loud_and_not_ready(
    aiohttp_client: Any,
    make_config: Callable[..., Config],
    sink: Sink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fatal(BaseException):
        """Not an Exception: ``run_forever`` does not start the worker again."""

    config = make_config(channels=hook(sink))
    client, delivery, worker = await start(aiohttp_client, config)
    await until(lambda: worker.owner, "the worker started")
    assert (await ready(config))[0] == 200
    original = worker.refresh_controls

    async def fatal(now: float) -> None:
        await original(now)
        raise Fatal("gone")

    worker.refresh_controls = fatal  # type: ignore[method-assign]
    worker.wake()
    await until(lambda: not delivery.running, "the worker's task ended")
    status, body = await ready(config)
    assert status == 503 and body["problems"]["worker"] == "delivery worker stopped"
    await until(
        lambda: any(
            r.levelno == logging.CRITICAL and "stopped for good" in r.getMessage()
            for r in caplog.records
        ),
        "the death was logged as critical",
    )
    # the thread closed what it had opened and ended; the service still answers and stops
    await until(lambda: not delivery._thread.is_alive(), "the thread ended")
    assert (await client.post("/?command=report", data=report())).status == 200
    await client.close()


async def test_no_worker_runs_no_delivery_thread(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(channels=hook(sink))
    client: Client = await aiohttp_client(create_app(config, run_worker=False))
    assert keys.DELIVERY not in client.app
    assert "delivery-worker" not in {t.name for t in threading.enumerate()}
    await client.post("/?command=report", data=report())
    assert [row[:2] for row in deliveries(client)] == [("queued", 0)]
    assert (await ready(config))[0] == 200
    await client.close()
    assert [row[:2] for row in deliveries(client)] == [("queued", 0)]
    assert sink.received == []
