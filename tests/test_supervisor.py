"""``serve --workers N``'s supervisor tells the truth: one set of metrics for all its processes,
READY once every process listens, restarts with a growing backoff and a limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import Sink, free_port, service_config

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0


def children(pid: int) -> list[int]:
    """The processes ``pid`` started, still running."""
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in found]


class NotifySocket:
    """A unix datagram socket in the abstract namespace, as systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"policy-server-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    @property
    def env(self) -> str:
        return "@" + self.name

    async def until(self, state: str, timeout: float = DEADLINE_S, after: int = 0) -> int:
        """Read datagrams until one (from the ``after``-th on) carries ``state`` (bounded); its
        index."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            found = [i for i, m in enumerate(self.messages) if i >= after and state in m]
            if found:
                return found[0]
            remaining = until - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {state} in {self.messages}")
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), remaining)
                self.messages.append(data.decode().split("\n"))

    def close(self) -> None:
        self.sock.close()


@dataclass
class Supervisor:
    """``policy-server serve --workers 2`` as a child process of the test."""

    tmp_path: Path
    config: Path
    port: int
    metrics_port: int
    notify: NotifySocket = field(default_factory=NotifySocket)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.tmp_path / "service.log"

    def start(self, workers: int = 2, *extra: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.env}
        command = ["serve", "--workers", str(workers), *extra, "-c", str(self.config)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "policy_server", *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self.proc

    def children(self) -> list[int]:
        assert self.proc is not None
        return children(self.proc.pid)

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp,
        ):
            assert resp.status == 200
            return await resp.text()

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as resp,
        ):
            return resp.status, json.loads(await resp.text())

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def supervisor(tmp_path: Path, geo_files: dict[str, Path], sink: Sink) -> Iterator[Supervisor]:
    port, metrics_port = free_port(), free_port()
    config = service_config(
        tmp_path / "policy.toml",
        port=port,
        geo=geo_files,
        storage={"path": tmp_path / "store.sqlite3"},
        sink_url=sink.url,
        metrics={"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
    )
    running = Supervisor(tmp_path, config, port, metrics_port)
    yield running
    running.stop()
    running.notify.close()


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE_S
) -> float:
    """Poll ``condition`` until it holds (bounded); the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await condition():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (any address)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[len("socket:[") : -1])
    return found


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    result = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            result += float(match.group(2))
    return result


async def reports(port: int, logins: list[str]) -> None:
    """One report per login, each on its own connection so that both processes get some."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(login: str) -> None:
            body = {"login": login, "remote": "203.0.113.7", "protocol": "imap", "success": True}
            url = f"http://127.0.0.1:{port}/?command=report"
            async with session.post(url, data=json.dumps(body)) as resp:
                assert resp.status == 200

        await asyncio.gather(*(one(login) for login in logins))


def pause(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "policy_server", "pause", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def queued(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        count: int = conn.execute(
            "SELECT count(*) FROM deliveries WHERE status IN ('queued', 'sending', 'held')"
        ).fetchone()[0]
    return count


@contextlib.asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    supervisor.start()
    try:
        await supervisor.notify.until("READY=1")
    except AssertionError:
        raise AssertionError(supervisor.log_path.read_text()) from None
    yield supervisor


async def test_ready_is_sent_once_both_processes_listen(supervisor: Supervisor) -> None:
    proc = supervisor.start()
    try:
        await supervisor.notify.until("READY=1")
    except AssertionError:
        raise AssertionError(supervisor.log_path.read_text()) from None
    # at the moment READY arrives, each of the two processes has its socket listening
    listening = listening_inodes(supervisor.port)
    pids = supervisor.children()
    assert len(pids) == 2
    for pid in pids:
        assert socket_inodes(pid) & listening, f"process {pid} does not listen yet"
    ready = next(m for m in supervisor.notify.messages if "READY=1" in m)
    assert "STATUS=2 of 2 service processes ready" in ready
    # the children's own notifications went to the supervisor, not to systemd
    assert sum("READY=1" in m for m in supervisor.notify.messages) == 1
    assert supervisor.notify.messages[0] == ["STATUS=1 of 2 service processes ready"]
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=5):
        pass

    # a reload: RELOADING=1 at once, READY=1 again once both processes have reloaded
    os.kill(proc.pid, signal.SIGHUP)
    reloading = await supervisor.notify.until("RELOADING=1", after=len(supervisor.notify.messages))
    assert any(line.startswith("MONOTONIC_USEC=") for line in supervisor.notify.messages[reloading])
    await supervisor.notify.until("READY=1", after=reloading)
    assert sorted(supervisor.children()) == sorted(pids)  # reloaded, not restarted
    log = supervisor.log_path.read_text()
    assert log.count("templates reloaded") == 2, log
    assert supervisor.stop() == 0
    assert proc.returncode == 0
    await supervisor.notify.until("STOPPING=1", timeout=5)


async def test_every_scrape_counts_the_requests_of_both_processes_once(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    pause(supervisor.config)  # the notices stay in the queue: its depth is known
    count = 40
    async with running(supervisor):
        await reports(supervisor.port, [f"user{i}" for i in range(count)])
        db = tmp_path / "store.sqlite3"
        assert queued(db) == count
        for _ in range(6):
            text = await supervisor.metrics()
            assert total(text, "policy_server_requests_total", command="report") == count
            assert total(text, "policy_server_request_seconds_count", command="report") == count
            assert total(text, "policy_server_notices_queued_total") == count
            # read from the shared store by every process: the same value, not the sum
            assert total(text, "policy_server_queue_depth") == count
            assert total(text, "policy_server_paused") == 1
            assert total(text, "policy_server_breaker_open") == 0
            assert total(text, "policy_server_ready") == 1
            assert total(text, "policy_server_component_up", component="store") == 1
            assert total(text, "policy_server_processes") == 2
            assert total(text, "policy_server_processes_ready") == 2
        assert await supervisor.readyz() == (200, {"status": "ready"})


async def test_a_crashed_process_is_restarted_after_a_backoff_and_its_counts_stay(
    supervisor: Supervisor,
) -> None:
    count = 30
    async with running(supervisor):
        await reports(supervisor.port, [f"user{i}" for i in range(count)])
        before = await supervisor.metrics()
        assert total(before, "policy_server_requests_total", command="report") == count
        first, second = supervisor.children()
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()

        async def replaced() -> bool:
            now = supervisor.children()
            return len(now) == 2 and first not in now and second in now

        await until(replaced, "a new process in place of the killed one")
        assert time.monotonic() - killed >= 0.5  # the first backoff

        async def ready() -> bool:
            return (await supervisor.readyz())[0] == 200

        await until(ready, "both processes ready again")
        after = await supervisor.metrics()
        # what the killed process counted is still in the sum: counters never go back
        assert total(after, "policy_server_requests_total", command="report") == count
        assert total(after, "policy_server_process_restarts_total") == 1
        await reports(supervisor.port, ["late"])
        text = await supervisor.metrics()
        assert total(text, "policy_server_requests_total", command="report") == count + 1
    log = supervisor.log_path.read_text()
    assert f"service process 1 (pid {first}) was killed by SIGKILL; restarting in 0.5 s" in log


async def test_readyz_is_503_with_the_reason_while_a_process_does_not_answer(
    supervisor: Supervisor,
) -> None:
    async with running(supervisor):
        assert (await supervisor.readyz())[0] == 200
        stuck = supervisor.children()[1]
        os.kill(stuck, signal.SIGSTOP)
        try:
            status, body = await supervisor.readyz()
            assert status == 503
            assert body["status"] == "not ready"
            assert list(body["problems"]) == ["process 2"]
            assert body["problems"]["process 2"].startswith(f"pid {stuck} does not answer")
            text = await supervisor.metrics()
            assert total(text, "policy_server_ready") == 0
            assert total(text, "policy_server_processes_ready") == 1
        finally:
            os.kill(stuck, signal.SIGCONT)

        async def ready() -> bool:
            return (await supervisor.readyz())[0] == 200

        await until(ready, "ready again")
        assert total(await supervisor.metrics(), "policy_server_ready") == 1


async def test_a_process_that_keeps_crashing_makes_the_supervisor_give_up(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    # passes the config's check, but stops every service process as it starts
    broken = tmp_path / "networks.txt"
    broken.write_text("this is not a network\n", encoding="utf-8")
    with supervisor.config.open("a", encoding="utf-8") as config:
        config.write(f"[networks]\nfiles = [{json.dumps(str(broken))}]\n")
    proc = supervisor.start()
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("the supervisor did not give up") from None
    log = supervisor.log_path.read_text()
    assert proc.returncode == 1, log
    last = log.splitlines()[-1]
    assert re.fullmatch(
        r"policy-server: service processes exited 6 times within 60 s, the last one with"
        r" status \d+; stopping",
        last,
    ), last
    assert not any("READY=1" in m for m in supervisor.notify.messages)
    # each restart of one process waited twice as long as the one before
    delays: dict[str, list[float]] = {}
    restarts = re.findall(r"service process (\d) \(pid \d+\) .*restarting in ([\d.]+) s", log)
    for slot, delay in restarts:
        delays.setdefault(slot, []).append(float(delay))
    assert delays, log
    for series in delays.values():
        assert series == [0.5 * 2**i for i in range(len(series))], delays


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def test_a_delivery_process_delivers_for_the_service_process(
    supervisor: Supervisor, sink: Sink
) -> None:
    """``--delivery process``: a niced ``worker`` beside a ``serve --no-worker``; its
    deliveries in the one set of metrics, its readiness in /readyz, reloaded with the rest and
    restarted when it dies."""
    proc = supervisor.start(1, "--delivery", "process")
    try:
        await supervisor.notify.until("READY=1")
    except AssertionError:
        raise AssertionError(supervisor.log_path.read_text()) from None
    ready = next(m for m in supervisor.notify.messages if "READY=1" in m)
    assert "STATUS=2 of 2 service processes ready" in ready
    by_role = {("worker" in cmdline(pid)): pid for pid in supervisor.children()}
    service, deliverer = by_role[False], by_role[True]
    assert "--no-worker" in cmdline(service)
    assert os.getpriority(os.PRIO_PROCESS, deliverer) == os.getpriority(os.PRIO_PROCESS, 0) + 10
    assert os.getpriority(os.PRIO_PROCESS, service) == os.getpriority(os.PRIO_PROCESS, 0)

    await reports(supervisor.port, [f"user{i}" for i in range(5)])
    assert sorted(d["login"] for d in await sink.wait_for(5)) == [f"user{i}" for i in range(5)]

    async def counted() -> bool:
        text = await supervisor.metrics()
        return total(text, "policy_server_deliveries_total", outcome="sent") == 5

    await until(counted, "the delivery process's deliveries in the supervisor's metrics")
    text = await supervisor.metrics()
    assert total(text, "policy_server_requests_total", command="report") == 5
    assert total(text, "policy_server_processes") == 2
    assert total(text, "policy_server_processes_ready") == 2
    assert total(text, "policy_server_ready") == 1
    assert await supervisor.readyz() == (200, {"status": "ready"})

    # a reload reaches the delivery process too, which stays (no handler: SIGHUP would end it)
    os.kill(proc.pid, signal.SIGHUP)
    reloading = await supervisor.notify.until("RELOADING=1", after=len(supervisor.notify.messages))
    await supervisor.notify.until("READY=1", after=reloading)
    assert sorted(supervisor.children()) == sorted([service, deliverer])
    log = supervisor.log_path.read_text()
    assert log.count("templates reloaded") == 2, log

    # killed, it is started again, and delivers what came meanwhile
    os.kill(deliverer, signal.SIGKILL)

    async def replaced() -> bool:
        return any(pid not in (service, deliverer) for pid in supervisor.children())

    await until(replaced, "a new delivery process")
    await reports(supervisor.port, ["user9"])
    assert (await sink.wait_for(6))[-1]["login"] == "user9"
    log = supervisor.log_path.read_text()
    assert f"service delivery process (pid {deliverer}) was killed by SIGKILL" in log, log
    assert supervisor.stop() == 0
