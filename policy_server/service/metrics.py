"""Prometheus metrics and health checks, served on their own listener (loopback by default).

The Dovecot-facing listener stays exactly what Dovecot needs; monitoring has its own port so
that a scraper can neither slow Dovecot's path nor see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..config import MetricsConfig, parse_listen
from ..store.base import DeliveryStatus, OperatorStore

log = logging.getLogger("policy_server.metrics")

# Dovecot gives up after 2 s; the buckets resolve the part that matters, well below that.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
QUEUE_REFRESH_S = 10.0


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
        self.deliveries = Counter(
            "policy_server_deliveries",
            "Delivery outcomes by channel: sent, retried, dead, held, undeliverable, folded,"
            " deferred, shadow.",
            ["channel", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "policy_server_queue_depth", "Deliveries by status.", ["status"], registry=r
        )
        self.queue_oldest = Gauge(
            "policy_server_queue_oldest_seconds",
            "Age of the oldest queued delivery (0 when none).",
            registry=r,
        )
        self.breaker_open = Gauge(
            "policy_server_breaker_open", "1 while the fleet-wide breaker is open.", registry=r
        )
        self.paused = Gauge("policy_server_paused", "1 while owner notices are paused.", registry=r)
        self.geo_age = Gauge(
            "policy_server_geo_data_age_seconds",
            "Age of the geo data in use, from its build time, by part.",
            ["part"],
            registry=r,
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
        )
        self.component_up = Gauge(
            "policy_server_component_up",
            "1 while a part of the service runs: writer (group commit), worker (deliveries),"
            " store (reachable).",
            ["component"],
            registry=r,
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


def monitoring_app(
    metrics: Metrics, store: OperatorStore, ready_checks: dict[str, Any]
) -> web.Application:
    """``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (it can do its work)."""

    async def metrics_view(request: web.Request) -> web.Response:
        with contextlib.suppress(Exception):
            await refresh_queue(metrics, store)
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems: dict[str, str] = {}
        try:
            await asyncio.wait_for(store.control("pause"), 2.0)
        except Exception as exc:
            problems["store"] = f"unreachable: {type(exc).__name__}: {exc}"[:200]
        for name, check in ready_checks.items():
            problem = check()
            if problem:
                problems[name] = problem
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def monitoring_listener(
    config: MetricsConfig, app: web.Application, reuse_port: bool = False
) -> AsyncIterator[web.AppRunner | None]:
    """Serve ``app`` on ``[metrics] listen`` while the context is open (nothing if disabled)."""
    if not config.enabled:
        yield None
        return
    host, port = parse_listen(config.listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        # monitoring must never stop the service from answering Dovecot
        log.error("metrics listener %s not started: %s", config.listen, exc)
    else:
        log.info("metrics and health on http://%s/metrics, /healthz, /readyz", config.listen)
    try:
        yield runner
    finally:
        await runner.cleanup()
