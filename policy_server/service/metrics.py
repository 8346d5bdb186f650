"""Prometheus metrics and health checks, served on their own listener (loopback by default).

The Dovecot-facing listener stays exactly what Dovecot needs; monitoring has its own port so
that a scraper can neither slow Dovecot's path nor see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..config import MetricsConfig
from ..store.base import DeliveryStatus, OperatorStore
from . import listen

log = logging.getLogger("policy_server.metrics")

# Dovecot gives up after 2 s; the buckets resolve the part that matters, well below that.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
QUEUE_REFRESH_S = 10.0
STORE_CHECK_S = 2.0
#: set by the supervisor of ``serve --workers N``: the directory of its processes' sockets
MONITOR_DIR_ENV = "POLICY_SERVER_MONITOR_DIR"


class Metrics:
    """Every metric of one service instance, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "policy_server_requests",
            "Requests from Dovecot by command and outcome.",
            ["command", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "policy_server_request_seconds",
            "Time to answer a request from Dovecot.",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fail_open = Counter(
            "policy_server_fail_open",
            "Reports answered status 0 without being recorded, by reason: budget (not"
            " committed in time), overloaded (the write queue was full), error.",
            ["reason"],
            registry=r,
        )
        self.unknown = Counter(
            "policy_server_origin_unknown",
            "Origin lookups without an answer, by part (country, provider).",
            ["part"],
            registry=r,
        )
        self.decisions = Counter(
            "policy_server_decisions",
            "Unusual logins by reason (notified or not).",
            ["reason"],
            registry=r,
        )
        self.notices = Counter(
            "policy_server_notices_queued", "Notices queued for delivery.", registry=r
        )
        self.allow_refused = Counter(
            "policy_server_allow_refused",
            "Logins refused before authentication: the account blocked their origin.",
            registry=r,
        )
        self.answers = Counter(
            "policy_server_owner_answers",
            "Owners' answers to their notices: confirmed (It was me), denied (It wasn't me).",
            ["answer"],
            registry=r,
        )
        for answer in ("confirmed", "denied"):
            self.answers.labels(answer)
        self.blocked_logins = Counter(
            "policy_server_blocked_origin_logins",
            "Successful logins reported from an origin the account blocked (allow checks off).",
            registry=r,
        )
        self.hijack_alerts = Counter(
            "policy_server_many_origins_alerts",
            "Accounts alerted for logins from many providers or countries within the window.",
            registry=r,
        )
        self.blocks_active = Gauge(
            "policy_server_blocks_active",
            "Blocks of an origin in force, as this process last read them.",
            registry=r,
        )
        self.deliveries = Counter(
            "policy_server_deliveries",
            "Delivery outcomes by channel: sent, retried, dead, held, undeliverable, folded,"
            " deferred, shadow.",
            ["channel", "outcome"],
            registry=r,
        )
        # Gauges read from the shared store (and the geo data every process loads): with
        # several processes (multiprocess mode), the most recent value, never a sum.
        shared: Final = "livemostrecent"
        self.queue_depth = Gauge(
            "policy_server_queue_depth",
            "Deliveries by status.",
            ["status"],
            registry=r,
            multiprocess_mode=shared,
        )
        self.queue_oldest = Gauge(
            "policy_server_queue_oldest_seconds",
            "Age of the oldest queued delivery (0 when none).",
            registry=r,
            multiprocess_mode=shared,
        )
        self.breaker_open = Gauge(
            "policy_server_breaker_open",
            "1 while the fleet-wide breaker is open.",
            registry=r,
            multiprocess_mode=shared,
        )
        self.paused = Gauge(
            "policy_server_paused",
            "1 while owner notices are paused.",
            registry=r,
            multiprocess_mode=shared,
        )
        self.geo_age = Gauge(
            "policy_server_geo_data_age_seconds",
            "Age of the geo data in use, from its build time, by part.",
            ["part"],
            registry=r,
            multiprocess_mode=shared,
        )

        self.claims_lost = Counter(
            "policy_server_delivery_claims_lost",
            "Deliveries whose claim another worker took over before their result was written"
            " (the result was not written over the new owner's).",
            registry=r,
        )
        self.worker_restarts = Counter(
            "policy_server_worker_restarts",
            "Times a delivery worker that died was started again.",
            registry=r,
        )
        self.ready = Gauge(
            "policy_server_ready",
            "1 when every readiness check passes (what /readyz answers 200 for), else 0.",
            registry=r,
            # several processes: ready only when every one of them is
            multiprocess_mode="livemin",
        )
        self.component_up = Gauge(
            "policy_server_component_up",
            "1 while a part of the service runs: writer (group commit), worker (deliveries),"
            " store (reachable).",
            ["component"],
            registry=r,
            multiprocess_mode="livemin",
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def refresh_queue(metrics: Metrics, store: OperatorStore, now: float | None = None) -> None:
    """Read the queue's depth and age and the shared switches into the gauges."""
    now = time.time() if now is None else now
    counts = await store.outbox_counts()
    for status in (
        DeliveryStatus.QUEUED,
        DeliveryStatus.SENDING,
        DeliveryStatus.HELD,
        DeliveryStatus.DEAD,
        DeliveryStatus.UNDELIVERABLE,
    ):
        metrics.queue_depth.labels(status).set(counts.get(status, 0))
    oldest = await store.oldest_queued()
    metrics.queue_oldest.set(max(0.0, now - oldest) if oldest is not None else 0.0)
    breaker = await store.control("breaker") or {}
    metrics.breaker_open.set(1 if breaker.get("state") == "open" else 0)
    pause = await store.control("pause") or {}
    metrics.paused.set(1 if pause.get("paused") else 0)


ReadyCheck = Callable[[], str]
"""A readiness check: why a part of the service cannot do its work ("" when it can)."""


async def run_checks(
    metrics: Metrics, store: OperatorStore, ready_checks: Mapping[str, ReadyCheck]
) -> dict[str, str]:
    """Run every readiness check and set ``ready`` and ``component_up``; the problems found."""
    problems: dict[str, str] = {}
    try:
        await asyncio.wait_for(store.control("pause"), STORE_CHECK_S)
    except Exception as exc:
        problems["store"] = f"unreachable: {type(exc).__name__}: {exc}"[:200]
    metrics.component_up.labels("store").set(0 if "store" in problems else 1)
    for name, check in ready_checks.items():
        try:
            problem = check()
        except Exception as exc:  # a broken check says so; the scrape goes on
            problem = f"check failed: {type(exc).__name__}: {exc}"[:200]
        if problem:
            problems[name] = problem
        metrics.component_up.labels(name).set(0 if problem else 1)
    metrics.ready.set(0 if problems else 1)
    return problems


def monitoring_app(
    metrics: Metrics, store: OperatorStore, ready_checks: Mapping[str, ReadyCheck]
) -> web.Application:
    """``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (it can do its work).

    Every scrape and every ``/readyz`` runs the readiness checks, so that ``policy_server_ready``
    and ``policy_server_component_up`` say what ``/readyz`` would answer.
    """

    async def metrics_view(request: web.Request) -> web.Response:
        with contextlib.suppress(Exception):
            await refresh_queue(metrics, store)
        await run_checks(metrics, store, ready_checks)
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = await run_checks(metrics, store, ready_checks)
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def child_socket(directory: str, pid: int) -> str:
    """Where a process of ``serve --workers N`` serves its monitoring to the supervisor."""
    return os.path.join(directory, f"{pid}.sock")


@contextlib.asynccontextmanager
async def monitoring_listener(
    config: MetricsConfig, app: web.Application, reuse_port: bool = False
) -> AsyncIterator[web.AppRunner | None]:
    """Serve ``app`` on ``[metrics] listen`` while the context is open (nothing if disabled).

    A process of ``serve --workers N`` serves it on a unix socket of the supervisor's instead
    (``POLICY_SERVER_MONITOR_DIR``): the supervisor answers ``[metrics] listen`` for all of its
    processes. A listener that cannot start is one line in the log: monitoring must never stop
    the service from answering Dovecot.
    """
    if not config.enabled:
        yield None
        return
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        supervisor_dir = os.environ.get(MONITOR_DIR_ENV, "")
        if supervisor_dir:
            path = child_socket(supervisor_dir, os.getpid())
            try:
                await web.UnixSite(runner, path).start()
            except OSError as exc:
                log.error("monitoring for the supervisor not started on %s: %s", path, exc)
            yield runner
            return
        try:
            sockets = listen.bind(config.listen, reuse_port=reuse_port)
            listen.listen(config.listen, sockets)
        except listen.ListenError as exc:
            log.error("metrics listener not started: %s (the service goes on without it)", exc)
        else:
            for sock in sockets:
                await web.SockSite(runner, sock).start()
            log.info("metrics and health on http://%s/metrics, /healthz, /readyz", config.listen)
        yield runner
    finally:
        await runner.cleanup()
