"""The monitoring of ``serve --workers N``: the supervisor's ``/metrics``, ``/healthz`` and
``/readyz`` on ``[metrics] listen``, speaking for every service process.

``/metrics`` is the sum of the processes' multiprocess files (prometheus-client), after each
process was asked (over its unix socket) to refresh its gauges and run its readiness checks;
``/readyz`` is 503 with the reasons while any process is not ready or does not answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from ..config import Config
from . import listen
from .metrics import child_socket

if TYPE_CHECKING:
    from .processes import Slot

log = logging.getLogger("policy_server.processes")

#: how long a process has to answer the supervisor's monitoring request
CHILD_TIMEOUT_S = 3.0
_READY_SAMPLE = re.compile(rb"^policy_server_ready (\S+)$", re.M)


class Pool(Protocol):
    """What the monitoring reads of the supervisor."""

    config: Config
    count: int
    restarts: int
    run_dir: str
    metrics_dir: str

    @property
    def slots(self) -> Sequence[Slot]: ...


@dataclass
class Answer:
    """A process's answer to the supervisor's monitoring request."""

    slot: Slot
    status: int | None = None  # None: no answer
    body: bytes = b""
    problem: str = ""


class PoolMonitoring:
    """The supervisor's monitoring listener (see the module's text)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.runner: web.AppRunner | None = None
        self.sockets: list[socket.socket] = []

    async def ask(self, slot: Slot, path: str) -> Answer:
        pid = slot.pid
        if pid is None:
            wait = max(0.0, slot.restart_at - time.monotonic())
            again = f" (starting again in {wait:.1f} s)" if slot.restart is not None else ""
            return Answer(slot, problem=f"not running{again}")
        if not slot.ready:
            return Answer(slot, problem=f"pid {pid} is not listening yet")
        connector = aiohttp.UnixConnector(path=child_socket(self.pool.run_dir, pid))
        timeout = aiohttp.ClientTimeout(total=CHILD_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(f"http://process{slot.number}{path}") as resp,
            ):
                return Answer(slot, resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            return Answer(slot, problem=f"pid {pid} does not answer: {reason}"[:200])

    async def ask_all(self, path: str) -> list[Answer]:
        return list(await asyncio.gather(*(self.ask(slot, path) for slot in self.pool.slots)))

    async def metrics_view(self, request: web.Request) -> web.Response:
        # each process refreshes its gauges and runs its checks as it answers
        answers = await self.ask_all("/metrics")
        ready = 0
        for answer in answers:
            match = _READY_SAMPLE.search(answer.body) if answer.status == 200 else None
            if match is not None and float(match.group(1)) == 1:
                ready += 1
        body = generate_latest(
            _Sum(self.pool.metrics_dir, ready, self.pool.count, self.pool.restarts)
        )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readyz(self, request: web.Request) -> web.Response:
        problems: dict[str, str] = {}
        for answer in await self.ask_all("/readyz"):
            pid, name = answer.slot.pid, answer.slot.name()
            if answer.problem:
                problems[name] = answer.problem
            elif answer.status != 200:
                try:
                    found = json.loads(answer.body)["problems"]
                    items = [(str(k), str(v)) for k, v in dict(found).items()]
                except (ValueError, KeyError, TypeError):
                    items = [(name, f"pid {pid} answered {answer.status}")]
                for check, problem in items:
                    said = f"{name} (pid {pid}): {problem}"
                    problems[check] = f"{problems[check]}; {said}" if check in problems else said
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def start(self) -> None:
        address = self.pool.config.metrics.listen
        os.mkdir(self.pool.metrics_dir)
        app = web.Application()
        app.router.add_get("/metrics", self.metrics_view)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        try:
            self.sockets = listen.bind(address)
            listen.listen(address, self.sockets)
        except listen.ListenError as exc:
            # monitoring must never stop the service from answering Dovecot
            log.error("metrics listener not started: %s (the service goes on without it)", exc)
            return
        for sock in self.sockets:
            await web.SockSite(self.runner, sock).start()
        log.info(
            "metrics and health of %d service processes on http://%s/metrics, /healthz, /readyz",
            self.pool.count,
            address,
        )

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        listen.close(self.sockets)


class _Sum:
    """What the supervisor's ``/metrics`` shows: every process's metrics summed from the
    multiprocess files, ``policy_server_ready`` as the supervisor saw it, and its own counts."""

    def __init__(self, directory: str, ready: int, count: int, restarts: int) -> None:
        self.directory, self.ready, self.count, self.restarts = directory, ready, count, restarts

    def collect(self) -> Iterable[Metric]:
        collector = multiprocess.MultiProcessCollector(None, path=self.directory)  # type: ignore[no-untyped-call]
        families: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
        # a process that did not answer (or is not running) set no gauge: not ready all the same
        ready = 1.0 if self.ready == self.count else 0.0
        seen = False
        for family in families:
            if family.name == "policy_server_ready":
                family.samples = [Sample("policy_server_ready", {}, ready)]
                seen = True
            yield family
        if not seen:
            yield GaugeMetricFamily(
                "policy_server_ready", "1 when every service process is ready, else 0.", ready
            )
        yield GaugeMetricFamily(
            "policy_server_processes",
            "Processes serve --workers runs (with --delivery process, the delivery process too).",
            self.count,
        )
        yield GaugeMetricFamily(
            "policy_server_processes_ready",
            "Service processes that answered the last scrape and are ready.",
            self.ready,
        )
        yield CounterMetricFamily(
            "policy_server_process_restarts",
            "Service processes started again after one exited.",
            self.restarts,
        )
