"""``policy-server worker``: the delivery worker as a process of its own, without the HTTP side.

Nodes that answer Dovecot can then run ``serve --no-worker``, so rendering and sending never
share a loop with the answers; any number of worker processes may share the store, whose
claims hand each delivery to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from ..config import Config
from ..store import open_store
from .breaker import AdminAlerts, Breaker
from .channels.base import Channel, build_channel
from .render import Renderer
from .worker import Worker

log = logging.getLogger("policy_server.worker")


async def run_worker(config: Config) -> None:
    """Deliver queued notices until SIGTERM or SIGINT."""
    renderer = Renderer(config.message, config.web, config.compromise.window_s)
    store = await open_store(config.storage)
    channels: dict[str, Channel] = {}
    try:
        for channel_config in config.channels:
            channel = build_channel(channel_config)
            await channel.open()
            channels[channel.name] = channel
        alerts = AdminAlerts(channels, config.channels)
        owner_channels = [c.name for c in config.channels if not c.admin]
        breaker = Breaker(store, config.breaker, owner_channels, alerts)
        worker = Worker(store, channels, renderer, config, breaker=breaker)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, worker.stop)
        await worker.run_forever()
    finally:
        for channel in channels.values():
            await channel.close()
        await store.close()
