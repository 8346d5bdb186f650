"""Fault injection on the delivery bookkeeping, against real stores (SQLite and PostgreSQL).

A notice must reach its receiver once. The faults: a store error in the middle of a batch (a
read of one group, the write of results), a channel slower than the lease, a claim that runs out
while the store cannot renew it and is taken by a second worker, and a process that dies with
claims and is started again. The receiver is a real aiohttp server; the only case where a
notice may arrive twice is a kill between the receiver's answer and the commit (not here).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from stores import Backend
from test_store_contract import login, record, statuses

from policy_server.config import Config
from policy_server.delivery.channels.base import Channel, build_channel
from policy_server.delivery.render import Renderer
from policy_server.delivery.worker import Worker
from policy_server.service.metrics import Metrics
from policy_server.store.base import Store, StoreError

CHANNEL = "webhook"


@dataclass
class Receiver:
    """A webhook receiver counting every notice id; requests for a login in ``gates`` wait
    until that gate opens, and every request waits ``delay`` seconds before its answer."""

    url: str = ""
    ids: Counter[str] = field(default_factory=Counter)
    logins: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        self.logins.append(payload["login"])
        self.arrived.set()
        gate = self.gates.get(payload["login"])
        if gate is not None:
            await gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # the receiver's own slowness, not a wait in a test
        self.ids[payload["id"]] += 1
        return web.Response(text="ok")

    def twice(self) -> list[str]:
        return [notice_id for notice_id, n in self.ids.items() if n > 1]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    peer = Receiver()
    app = web.Application()
    app.router.add_post("/hook", peer.handle)
    server = await aiohttp_server(app)
    peer.url = str(server.make_url("/hook"))
    yield peer


class Faults:
    """A real store with faults injected into named methods: each entry of ``fail`` is a
    predicate on the call's arguments; a call it matches raises StoreError. ``stall`` makes
    matching calls wait for an event first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fail: dict[str, Callable[..., bool]] = {}
        self.stall: dict[str, tuple[Callable[..., bool], asyncio.Event]] = {}
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            stall = self.stall.get(name)
            if stall is not None and stall[0](*args, **kwargs):
                await stall[1].wait()
            check = self.fail.get(name)
            if check is not None and check(*args, **kwargs):
                raise StoreError(f"{name}: injected failure")
            return await target(*args, **kwargs)

        return call


async def open_channels(config: Config) -> dict[str, Channel]:
    channels: dict[str, Channel] = {}
    for channel_config in config.channels:
        channel = build_channel(channel_config)
        await channel.open()
        channels[channel.name] = channel
    return channels


@pytest.fixture
async def make_worker(
    make_config: Callable[..., Config], receiver: Receiver
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[dict[str, Channel]] = []

    async def make(store: Any, owner: str | None = None, **queue: Any) -> Worker:
        config = make_config(
            channels=[{"type": "webhook", "name": CHANNEL, "url": receiver.url, "timeout_s": 30}],
            queue={"backoff_base_s": 0.01, "backoff_max_s": 0.05, **queue},
        )
        channels = await open_channels(config)
        opened.append(channels)
        return Worker(
            store, channels, Renderer(config.message), config, owner=owner, metrics=Metrics()
        )

    yield make
    for channels in opened:
        for channel in channels.values():
            await channel.close()


async def queue_notices(store: Store, *accounts: str) -> None:
    for account in accounts:
        outcome = await record(store, login(account, at=time.time()), channels=(CHANNEL,))
        assert outcome.notice_id is not None


def metric(worker: Worker, name: str) -> float:
    assert worker._metrics is not None
    text = worker._metrics.exposition().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` (a coroutine function or a plain one) until true, bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


# -- a store error in a batch -----------------------------------------------------


async def test_a_store_error_in_the_batchs_lookups_puts_the_batch_back_unattempted(
    store: Store, make_worker: Callable[..., Any], receiver: Receiver
) -> None:
    """The contacts, sent times and waiting notices are read once per claimed batch: when that
    read fails nothing is sent, and every claimed delivery is queued again, no attempt spent."""
    await queue_notices(store, "alice", "bob", "carol")
    faults = Faults(store)
    faults.fail["waiting_notices_of"] = lambda pairs: ("bob", CHANNEL) in set(pairs)
    worker = await make_worker(faults)
    assert await worker.run_once() == 3
    assert receiver.logins == []
    assert await statuses(store) == {"queued": 3}
    for queued in await store.list_deliveries(status="queued"):
        assert queued["attempts"] == 0
        assert "not attempted" in (queued["last_error"] or "")
    assert faults.calls["contacts"] == 1 and faults.calls["contact"] == 0
    del faults.fail["waiting_notices_of"]
    await until(worker.run_once, "the batch claimed again")
    assert sorted(receiver.logins) == ["alice", "bob", "carol"]
    assert await statuses(store) == {"sent": 3}
    assert receiver.twice() == []


async def test_a_failed_write_of_results_is_retried_not_sent_again(
    store: Store, make_worker: Callable[..., Any], receiver: Receiver
) -> None:
    await queue_notices(store, "alice", "bob")
    faults = Faults(store)
    failures = iter([True, True])
    faults.fail["finish"] = lambda *args: next(failures, False)
    worker = await make_worker(faults)
    assert await worker.run_once() == 2
    assert await statuses(store) == {"sent": 2}
    assert faults.calls["finish"] >= 3
    # nothing left claimed: a second worker finds nothing to send, now or after the lease
    other = await make_worker(store, owner="other")
    assert await other.run_once() == 0
    assert sorted(receiver.logins) == ["alice", "bob"] and receiver.twice() == []


async def test_each_result_is_recorded_as_soon_as_its_group_is_done(
    store: Store, make_worker: Callable[..., Any], receiver: Receiver
) -> None:
    await queue_notices(store, "alice", "bob")
    receiver.gates["bob"] = asyncio.Event()
    worker = await make_worker(store)
    running = asyncio.create_task(worker.run_once())

    async def alice_sent() -> bool:
        rows = {d["account"]: d["status"] for d in await store.list_deliveries()}
        return rows == {"alice": "sent", "bob": "sending"}

    try:
        # bob's receiver still holds the request: alice's result is already committed, so a
        # kill now would send only bob's again
        await until(alice_sent, "alice recorded as sent while bob is in flight")
    finally:
        receiver.gates["bob"].set()
    assert await running == 2
    assert await statuses(store) == {"sent": 2}


# -- leases ------------------------------------------------------------------------------------


async def test_a_channel_slower_than_the_lease_keeps_its_claim(
    store: Store, make_worker: Callable[..., Any], receiver: Receiver
) -> None:
    await queue_notices(store, "alice")
    receiver.delay = 2.0  # the lease is 0.6 s: renewed three times a lease meanwhile
    first = await make_worker(store, owner="node-a", lease_s=0.6)
    second = await make_worker(store, owner="node-b", lease_s=0.6)
    running = asyncio.create_task(first.run_once())
    await until(lambda: receiver.logins, "node A is sending")
    stolen = 0
    while not running.done():
        stolen += await second.run_once()
        await asyncio.sleep(0.05)
    assert await running == 1
    assert stolen == 0
    assert list(receiver.ids.values()) == [1]
    assert await statuses(store) == {"sent": 1}


async def test_a_lost_claim_is_neither_sent_nor_written_over_the_new_owners(
    store: Store, make_worker: Callable[..., Any], receiver: Receiver
) -> None:
    await queue_notices(store, "alice")
    faults = Faults(store)
    # node A cannot reach the store to renew, and stalls before sending
    faults.fail["renew"] = lambda *args: True
    resume = asyncio.Event()
    faults.stall["contacts"] = (lambda accounts: True, resume)
    first = await make_worker(faults, owner="node-a", lease_s=0.6)
    second = await make_worker(store, owner="node-b", lease_s=30)
    running = asyncio.create_task(first.run_once())
    await until(lambda: faults.calls["contacts"] == 1, "node A claimed and is stalled")
    # the lease runs out; node B takes the claim and delivers
    await until(second.run_once, "node B took the expired claim", timeout=5)
    assert list(receiver.ids.values()) == [1]
    assert await statuses(store) == {"sent": 1}
    resume.set()
    assert await running == 1
    # node A did not send, and its result did not overwrite node B's
    assert list(receiver.ids.values()) == [1]
    assert await statuses(store) == {"sent": 1}
    assert metric(first, "policy_server_delivery_claims_lost_total") == 1


# -- a process that dies and is started again ---------------------------------------------------


async def test_a_restarted_node_takes_its_stranded_claims_back_at_once(
    backend: Backend, make_worker: Callable[..., Any], receiver: Receiver
) -> None:
    store = await backend.open()
    await queue_notices(store, "alice", "bob")
    dying = await make_worker(store, worker_id="mail1")
    await dying.start()
    assert dying.owner.startswith("mail1/0#")
    # it claims (lease 60 s) and dies before any result: its store closes with the process
    assert len(await store.claim(dying.owner, 10, time.time(), 60.0)) == 2
    await store.close()

    store = await backend.open()
    try:
        # another process of the node is alive meanwhile: it has a slot of its own and leaves
        # the claims alone
        neighbour = await make_worker(store, worker_id="mail1")
        restarted_store = await backend.open()
        try:
            await neighbour.start()
            assert neighbour.owner.startswith("mail1/0#")
            restarted = await make_worker(restarted_store, worker_id="mail1")
            await restarted.start()
            assert restarted.owner.startswith("mail1/1#")
        finally:
            await restarted_store.close()
        # mail1/0 (the neighbour) took back what the dead mail1/0 left, due at once
        assert await statuses(store) == {"queued": 2}
        assert await neighbour.run_once() == 2
        assert sorted(receiver.logins) == ["alice", "bob"]
        rows = await store.list_deliveries()
        assert {r["status"] for r in rows} == {"sent"}
        assert {r["attempts"] for r in rows} == {1}  # the dead claim's attempt given back
    finally:
        await store.close()


async def test_two_live_workers_of_one_node_never_share_an_identity(
    backend: Backend, make_worker: Callable[..., Any]
) -> None:
    stores = [await backend.open() for _ in range(3)]
    try:
        workers = [await make_worker(s, worker_id="mail1") for s in stores]
        for worker in workers:
            await worker.start()
        identities = [w.owner.split("#")[0] for w in workers]
        assert identities == ["mail1/0", "mail1/1", "mail1/2"]
    finally:
        for s in stores:
            await s.close()
    # once their processes are gone, a new one starts at the first slot again
    again = await backend.open()
    try:
        worker = await make_worker(again, worker_id="mail1")
        await worker.start()
        assert worker.owner.startswith("mail1/0#")
    finally:
        await again.close()


async def test_a_worker_cannot_start_while_the_store_is_down_and_says_so(
    store: Store, make_worker: Callable[..., Any]
) -> None:
    faults = Faults(store)
    faults.fail["lock_identity"] = lambda *args: True
    worker = await make_worker(faults)
    with pytest.raises(StoreError):
        await worker.start()
    assert worker.owner == ""
    running = asyncio.create_task(worker.run())
    await until(lambda: worker.failure.startswith("cannot start"), "the failure is reported")
    del faults.fail["lock_identity"]
    await until(lambda: worker.owner != "", "the worker started once the store answered")
    await until(lambda: worker.failure == "", "the failure cleared")
    worker.stop()
    await running
