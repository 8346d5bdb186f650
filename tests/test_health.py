"""Health that tells the truth, and bounds that hold: a dead writer or worker is not ready (and
the worker comes back), a full write queue answers at once, the command label cannot grow, and
a PostgreSQL connection that stops answering is replaced instead of stalling the writer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from stores import DSN, drop_schema, require_postgres
from support import Sink
from test_claims import until
from test_delivery import report
from test_metrics import get, value
from test_store_contract import login, record

from policy_server.config import Config, StorageConfig
from policy_server.delivery.worker import Worker
from policy_server.service import keys
from policy_server.service.app import create_app
from policy_server.store import open_store
from policy_server.store.base import StoreError

Client = TestClient[web.Request, web.Application]


async def ready(config: Config) -> tuple[int, dict[str, Any]]:
    status, text = await get(config, "/readyz")
    return status, json.loads(text)


async def test_a_dead_group_commit_writer_is_not_ready(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    client: Client = await aiohttp_client(create_app(config))
    assert (await ready(config))[0] == 200
    writer = client.app[keys.STORE]._writer_task
    assert writer is not None
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    status, body = await ready(config)
    assert status == 503
    assert body["problems"] == {"writer": "group-commit writer stopped"}
    text = (await get(config, "/metrics"))[1]
    assert value(text, "policy_server_ready") == 0
    assert value(text, "policy_server_component_up", component="writer") == 0
    assert value(text, "policy_server_component_up", component="store") == 1


async def test_a_worker_that_dies_is_not_ready_and_comes_back(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(channels=[{"type": "webhook", "name": "hook", "url": sink.url}])
    app = create_app(config)
    client: Client = await aiohttp_client(app)
    worker: Worker = app[keys.WORKER]
    await until(lambda: worker.owner, "the worker started")
    # a bug in one round (here: reading the shared switches) kills the worker's loop
    original = worker.refresh_controls
    broken = asyncio.Event()

    async def refresh_once_broken(now: float) -> None:
        if not broken.is_set():
            broken.set()
            raise RuntimeError("a bug")
        await original(now)

    worker.refresh_controls = refresh_once_broken  # type: ignore[method-assign]
    worker.wake()
    await until(lambda: worker.failure, "the worker died")
    status, body = await ready(config)
    assert status == 503 and body["problems"]["worker"] == "died: RuntimeError: a bug"
    # started again after its backoff: it delivers, and is ready again
    await client.post("/?command=report", data=report(login="alice"))
    await sink.wait_for(1)
    await until(lambda: worker.failure == "", "the failure cleared")
    assert (await ready(config))[0] == 200
    text = (await get(config, "/metrics"))[1]
    assert value(text, "policy_server_worker_restarts_total") == 1
    assert value(text, "policy_server_ready") == 1


async def test_a_full_write_queue_answers_at_once_and_counts_overloaded(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config(storage={"max_pending_writes": 2}, server={"request_budget_ms": 1900})
    app = create_app(config)
    client: Client = await aiohttp_client(app)
    store = app[keys.STORE]
    # the store stalls: its one write transaction is held
    async with store._write_lock:
        waiting = [
            asyncio.create_task(
                client.post("/?command=report", data=report(login=f"u{i}", remote="203.0.113.7"))
            )
            for i in range(2)
        ]
        await until(lambda: app[keys.RECORDER].pending == 2, "two reports wait for the store")
        started = time.monotonic()
        refused = await client.post("/?command=report", data=report(login="u3"))
        assert refused.status == 200 and (await refused.json())["status"] == 0
        # answered without waiting for the 1.9 s budget
        assert time.monotonic() - started < 1.5
        text = (await get(config, "/metrics"))[1]
        assert value(text, "policy_server_fail_open_total", reason="overloaded") == 1
        assert app[keys.RECORDER].pending == 2
    # the stall ends: the two that waited are recorded
    for task in waiting:
        assert (await task).status == 200
    history = await store.history("u0")
    assert history.origins


async def test_the_command_label_has_three_values_whatever_is_sent(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config(server={"api_header": "X-API-Key: k"})
    client: Client = await aiohttp_client(create_app(config))
    long = "x" * 5000
    await client.post(f"/?command={long}", data=b"{}")  # unauthenticated
    await client.post(f"/?command={long}", data=b"{}", headers={"X-API-Key": "k"})
    await client.get("/?command=report")
    text = (await get(config, "/metrics"))[1]
    commands = {
        line.split('command="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("policy_server_requests_total{")
    }
    assert commands == {"other", "report"}
    assert max(len(line) for line in text.splitlines()) < 300


# -- PostgreSQL: a connection that stops answering -----------------------------------------------


class Blackhole:
    """A TCP proxy to PostgreSQL that can stop forwarding on the connections it carries (as a
    half-open connection does: no reset, no answer) while new connections still pass."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def freeze_existing(self) -> int:
        for flag in self.frozen:
            flag.set()
        return len(self.frozen)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        frozen = asyncio.Event()
        self.frozen.append(frozen)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, frozen))
            self._pumps.add(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if frozen.is_set():
                    # swallowed: the peer never hears back, and nothing is closed
                    await asyncio.Event().wait()
                dst.write(data)
                await dst.drain()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def blackhole() -> AsyncIterator[Blackhole]:
    from urllib.parse import urlparse

    await require_postgres()
    parsed = urlparse(DSN)
    proxy = Blackhole((parsed.hostname or "127.0.0.1", parsed.port or 5432))
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_postgres_connection_that_stops_answering_is_replaced(
    blackhole: Blackhole,
) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(DSN)
    dsn = parsed._replace(netloc=f"{parsed.username or 'postgres'}@127.0.0.1:{blackhole.port}")
    schema = f"t_{secrets.token_hex(8)}"
    config = StorageConfig(
        backend="postgres",
        dsn=dsn.geturl(),
        schema=schema,
        group_commit_wait_ms=1,
        pool_size=2,
        command_timeout_s=1.0,
    )
    store = await open_store(config)
    try:
        await record(store, login("alice"))
        assert blackhole.freeze_existing() >= 1
        started = time.monotonic()
        # the writer's connection is half-open: the batch fails within the command timeout
        with pytest.raises(StoreError):
            await asyncio.wait_for(record(store, login("bob")), 30)
        assert time.monotonic() - started < 10
        # and is replaced: the next write goes through a new connection
        outcome = await asyncio.wait_for(record(store, login("carol")), 30)
        assert outcome.notice_id is not None
        assert (await store.history("carol")).origins
    finally:
        await asyncio.wait_for(store.close(), 30)
        await drop_schema(schema)
