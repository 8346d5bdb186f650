"""The delivery worker with resources of its own, and ``policy-server worker``, which runs it as a
process of its own, without the HTTP side.

``delivery_worker`` opens what a worker needs on the running loop: the store (a connection of
its own), the channels, the renderer, the admin alerts and the breaker. ``run_worker`` (the
``worker`` command) runs it until a signal; ``serve`` runs it on a thread of its own
(``thread.py``), or, with ``--delivery process``, has its supervisor run ``worker`` as a process
of its own beside the service processes. Any number of workers, threads or processes, may share
the store, whose claims hand each delivery to one of them.

Under that supervisor (``POLICY_SERVER_MONITOR_DIR`` set) the worker counts into the
supervisor's metrics, answers its ``/metrics`` and ``/readyz`` over a unix socket and tells it
(``NOTIFY_SOCKET``) once it runs, as a service process does. SIGHUP compiles the templates again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

from ..config import Config
from ..service.metrics import MONITOR_DIR_ENV, Metrics, monitoring_app, monitoring_listener
from ..service.systemd import monotonic_usec, notify
from ..store import open_store
from .breaker import AdminAlerts, Breaker
from .channels.base import Channel, build_channel
from .render import Renderer, recompile
from .worker import Worker

log = logging.getLogger("policy_server.worker")


@contextlib.asynccontextmanager
async def delivery_worker(
    config: Config, metrics: Metrics | None = None, monitored: bool = False
) -> AsyncIterator[Worker]:
    """A worker on a store connection and channels of its own, opened on the running loop, with
    its own renderer, admin alerts and breaker; all of it is closed on the way out.
    ``monitored`` (with ``metrics``): its ``/metrics``, ``/healthz`` and ``/readyz`` are served
    as a process of ``serve`` serves them (``monitoring_listener``)."""
    renderer = Renderer(config.message, config.web, config.compromise.window_s)
    store = await open_store(config.storage)
    channels: dict[str, Channel] = {}
    try:
        for channel_config in config.channels:
            channel = build_channel(channel_config)
            await channel.open()
            channels[channel.name] = channel
        alerts = AdminAlerts(channels, config.channels)
        # admin channels carry operators' alerts only; owner notices go through the others
        owner_channels = [c.name for c in config.channels if not c.admin]
        breaker = Breaker(store, config.breaker, owner_channels, alerts)
        worker = Worker(store, channels, renderer, config, breaker=breaker, metrics=metrics)
        if not monitored or metrics is None:
            yield worker
            return
        monitoring = monitoring_app(metrics, store, {"worker": lambda: worker.failure})
        async with monitoring_listener(config.metrics, monitoring):
            yield worker
    finally:
        for channel in channels.values():
            await channel.close()
        await store.close()


async def run_worker(config: Config) -> None:
    """Deliver queued notices until SIGTERM or SIGINT; SIGHUP compiles the templates again."""
    supervised = bool(os.environ.get(MONITOR_DIR_ENV)) and config.metrics.enabled
    metrics = Metrics() if supervised else None
    async with delivery_worker(config, metrics, monitored=supervised) as worker:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, worker.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, reload_templates, config, worker)
        notify("READY=1", "STATUS=delivering")
        await worker.run_forever()
        notify("STOPPING=1")


def reload_templates(config: Config, worker: Worker) -> None:
    """SIGHUP: compile the templates again; broken ones are refused and the ones in use stay."""
    notify("RELOADING=1", monotonic_usec())
    renderer = recompile(config)
    if renderer is not None:
        worker.use_renderer(renderer)
    notify("READY=1")
