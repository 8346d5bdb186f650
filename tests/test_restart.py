"""A service killed at any moment loses no committed notice (real processes, SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from stores import Backend
from support import Sink, free_port, service_config

pytestmark = pytest.mark.slow


class Service:
    """``policy-server serve`` as a child process, stopped by pid."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "policy_server", "serve", "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
        )
        log.close()

    async def ready(self, timeout: float = 20.0) -> None:
        body = json.dumps({"login": "probe", "remote": "127.0.0.1", "protocol": "imap"})
        async with aiohttp.ClientSession() as session:
            for _ in range(int(timeout / 0.1)):
                assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
                try:
                    async with session.post(self.url("allow"), data=body) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("service did not become ready")

    def url(self, command: str) -> str:
        return f"http://127.0.0.1:{self.port}/?command={command}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def service_factory(tmp_path: Path, geo_files: dict[str, Path]) -> Iterator[Any]:
    started: list[Service] = []

    def make(
        sink_url: str, lease_s: float = 60.0, storage: dict[str, Any] | None = None
    ) -> Service:
        port = free_port()
        config = tmp_path / "policy.toml"
        service_config(
            config,
            port=port,
            geo=geo_files,
            storage=storage or {"path": tmp_path / "store.sqlite3"},
            sink_url=sink_url,
            asn="ipasn",
            queue={"backoff_base_s": 0.1, "backoff_max_s": 0.5, "lease_s": lease_s},
            channel={"timeout_s": 30},
        )
        service = Service(config, port, tmp_path / "service.log")
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


async def send_reports(service: Service, count: int) -> list[str]:
    """Report ``count`` first logins; return the logins Dovecot would have seen acknowledged."""
    acknowledged: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            body = {
                "login": f"user{i}@example.com",
                "remote": f"203.0.113.{i % 100 + 1}",
                "protocol": "imap",
                "success": True,
                "policy_reject": False,
                "tls": False,
            }
            async with session.post(service.url("report"), data=json.dumps(body)) as resp:
                if resp.status == 200:
                    acknowledged.append(body["login"])
    return acknowledged


async def test_killed_with_undelivered_notices_delivers_them_after_restart(
    service_factory: Any, sink: Sink
) -> None:
    sink.script = [503] * 10_000  # the receiver is down while the logins happen
    # deliveries in flight at the kill come back after their lease
    service = service_factory(sink.url, lease_s=2.0)
    service.start()
    await service.ready()
    acknowledged = await send_reports(service, 40)
    assert len(acknowledged) == 40
    await sink.wait_for(1)  # the worker has been trying
    service.kill()

    sink.script = []
    sink.received.clear()
    service.start()
    await service.ready()
    await sink.wait_for(40, timeout=30)
    logins = {d["login"] for d in sink.received}
    assert logins == set(acknowledged)
    # once per notice after the receiver came back (ids are unique per notice)
    assert len(set(sink.ids())) == 40


async def test_in_flight_delivery_is_sent_again_with_the_same_id(
    service_factory: Any, sink: Sink
) -> None:
    sink.delay = 4.0  # the first delivery hangs; the service is killed while it waits
    service = service_factory(sink.url, lease_s=1.0)
    service.start()
    await service.ready()
    assert await send_reports(service, 1) == ["user0@example.com"]
    await sink.wait_for(1)
    first_id = sink.received[0]["id"]
    service.kill()

    sink.delay = 0.0
    service.start()
    await service.ready()
    await sink.wait_for(2, timeout=20)
    assert sink.received[1]["id"] == first_id
    assert sink.received[1]["login"] == "user0@example.com"


async def test_a_killed_node_sends_again_only_what_was_in_flight_and_at_once(
    service_factory: Any, sink: Sink, backend: Backend
) -> None:
    # a slow receiver: 60 notices go out 16 at a time (the worker's concurrency), 0.2 s each
    sink.delay = 0.2
    storage = {
        key: value
        for key, value in backend.config.model_dump().items()
        if key in ("backend", "path", "dsn", "schema")
    }
    service = service_factory(sink.url, lease_s=60.0, storage=storage)
    service.start()
    await service.ready()
    acknowledged = await send_reports(service, 60)
    assert len(acknowledged) == 60
    await sink.wait_for(36, timeout=30)
    service.kill()
    store = await backend.open()
    try:
        recorded = {d["id"] for d in await store.list_deliveries(status="sent", limit=100)}
    finally:
        await store.close()
    # what the killed process had sent is in (requests it wrote before dying included)
    reached = set(sink.ids())
    unrecorded = reached - recorded

    sink.delay = 0.0
    started = asyncio.get_running_loop().time()
    service.start()
    await service.ready()
    # the restarted process takes its predecessor's claims back at once: everything arrives
    # long before the 60 s lease would have let another worker take them
    for _ in range(200):
        if len(set(sink.ids())) == 60:
            break
        await asyncio.sleep(0.1)
    waited = asyncio.get_running_loop().time() - started
    ids = sink.ids()
    twice = {notice_id for notice_id in ids if ids.count(notice_id) > 1}
    print(
        f"\n{backend.name}: killed when {len(reached)} notices had reached the receiver and"
        f" {len(recorded)} were recorded as sent: all 60 delivered {waited:.1f} s after the"
        f" restart, {len(twice)} of them twice"
    )
    assert len(set(ids)) == 60 and {d["login"] for d in sink.received} == set(acknowledged)
    assert waited < 20
    # each result was recorded as it came: what came twice is only what the receiver had taken
    # and the service had not recorded when the kill came (the deliveries in flight, 16 at a
    # time, and those whose answer was being committed), not everything it had claimed
    assert twice <= unrecorded
    assert len(unrecorded) <= 2 * 16
