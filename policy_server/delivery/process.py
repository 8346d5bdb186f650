"""The delivery worker with resources of its own, and ``policy-server worker``, which runs it as a
process of its own, without the HTTP side.

``delivery_worker`` opens what a worker needs on the running loop: the store (a connection of
its own), the channels, the renderer, the admin alerts and the breaker. ``run_worker`` (the
``worker`` command) runs it until a signal; ``serve`` runs it on a thread of its own
(``thread.py``), so rendering and sending never share a loop with the answers to Dovecot. Any
number of workers, threads or processes, may share the store, whose claims hand each delivery to
one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from ..config import Config
from ..service.metrics import Metrics
from ..store import open_store
from .breaker import AdminAlerts, Breaker
from .channels.base import Channel, build_channel
from .render import Renderer
from .worker import Worker

log = logging.getLogger("policy_server.worker")


@contextlib.asynccontextmanager
async def delivery_worker(config: Config, metrics: Metrics | None = None) -> AsyncIterator[Worker]:
    """A worker on a store connection and channels of its own, opened on the running loop, with
    its own renderer, admin alerts and breaker; all of it is closed on the way out."""
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
        yield Worker(store, channels, renderer, config, breaker=breaker, metrics=metrics)
    finally:
        for channel in channels.values():
            await channel.close()
        await store.close()


async def run_worker(config: Config) -> None:
    """Deliver queued notices until SIGTERM or SIGINT."""
    async with delivery_worker(config) as worker:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, worker.stop)
        await worker.run_forever()
