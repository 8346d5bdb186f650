"""The application factory: each resource opened in its own cleanup context, in order.

The application's event loop answers Dovecot, with the store, channels, renderer and admin
alerts the answers need (the responder, the owner's pages, the geo guard). The delivery worker
runs on a thread of its own with an event loop and resources of its own (``_worker_ctx``); the
answering loop only wakes it, hands it reloaded templates and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config
from ..delivery.breaker import AdminAlerts, Breaker
from ..delivery.channels.base import Channel, build_channel
from ..delivery.geo_guard import check_geo_change
from ..delivery.render import Renderer, recompile
from ..delivery.thread import DeliveryThread
from ..delivery.worker import Worker
from ..events import EventWriter
from ..model import Origin
from ..origin.networks import KnownNetworks, NetworksError
from ..origin.resolver import OriginResolver
from ..store import StoreError, open_store
from ..web.pages import OwnerPages, pages_app, pages_listener
from . import keys
from .auth import Authenticator
from .blocks import BlockSet
from .handlers import timed_endpoint
from .metrics import Metrics, monitoring_app, monitoring_listener
from .recorder import LoginRecorder
from .response import Responder
from .stats import Stats
from .systemd import monotonic_usec, notify

log = logging.getLogger("policy_server.app")

# reload tasks in flight, kept referenced until they finish
_reloads: set[asyncio.Task[bool]] = set()


async def _origin_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    # Opening geo files (and the bundled dataset) reads megabytes: keep it off the loop.
    resolver = await asyncio.to_thread(OriginResolver.from_config, config.geoip)
    for part, source in resolver.describe().items():
        log.info("origin %s: %s", part, source)
    # A broken list stops the start: running without the admin's trusted networks would
    # notify everyone in them.
    resolver.networks = KnownNetworks.load(config.networks)
    if resolver.networks:
        log.info("known networks: %d entries", len(resolver.networks))
    app[keys.RESOLVER] = resolver
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        # not in the main thread (or not on Unix): reload only by restart
        loop.add_signal_handler(signal.SIGHUP, reload, app)
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.remove_signal_handler(signal.SIGHUP)
    resolver.close()


def reload(app: web.Application) -> None:
    """SIGHUP: geo files (through the guard), known networks, templates, the events file."""
    notify("RELOADING=1", monotonic_usec())
    reload_networks(app)
    reload_templates(app)
    reopen_events(app)
    task = asyncio.get_running_loop().create_task(reload_geo(app), name="reload-geo")
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)
    task.add_done_callback(lambda _task: notify("READY=1"))


def reload_templates(app: web.Application) -> bool:
    """Compile the templates again; broken ones are refused and the ones in use stay.

    The delivery worker renders with the new ones from its next notice on (``use_renderer``
    hands them to its thread's loop).
    """
    renderer = recompile(app[keys.CONFIG])
    if renderer is None:
        return False
    worker = app.get(keys.WORKER)
    if worker is not None:
        worker.use_renderer(renderer)
    return True


def reopen_events(app: web.Application) -> None:
    """Close the events file, so that the next report opens it again (after logrotate)."""
    recorder = app.get(keys.RECORDER)
    if recorder is not None and recorder.events is not None:
        recorder.events.close()


def reload_networks(app: web.Application) -> bool:
    """Read the known-network lists again; a broken list keeps the ones in use (logged)."""
    resolver = app[keys.RESOLVER]
    try:
        networks = KnownNetworks.load(app[keys.CONFIG].networks)
    except NetworksError as exc:
        log.error(
            "known networks not reloaded, keeping the %d entries in use: %s",
            len(resolver.networks),
            exc,
        )
        return False
    resolver.networks = networks
    log.info("known networks reloaded: %d entries", len(networks))
    return True


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[keys.CONFIG].storage)
    app[keys.STORE] = store
    yield
    await store.close()


async def _channels_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    app[keys.RENDERER] = Renderer(config.message, config.web, config.compromise.window_s)
    channels: dict[str, Channel] = {}
    for channel_config in config.channels:
        channel = build_channel(channel_config)
        await channel.open()
        channels[channel.name] = channel
    app[keys.CHANNELS] = channels
    app[keys.ALERTS] = AdminAlerts(channels, config.channels)
    yield
    for channel in channels.values():
        await channel.close()


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The delivery worker, on a thread and event loop of its own (``delivery/thread.py``), with
    its own store connection, channels, renderer, alerts and breaker: rendering and sending take
    no time from the answers. Then the recorder, which wakes it for each notice it queues.

    With ``run_worker=False`` a worker is built on this loop's store and channels and never run
    (deliveries are left to ``policy-server worker`` processes): waking it does nothing.
    """
    config = app[keys.CONFIG]
    # admin channels carry operators' alerts only; owner notices go through the others
    owner_channels = [c.name for c in config.channels if not c.admin]
    metrics = app[keys.METRICS]
    delivery: DeliveryThread | None = None
    if app[keys.RUN_WORKER]:
        delivery = DeliveryThread(config, metrics)
        worker = await delivery.start()
        app[keys.DELIVERY] = delivery
    else:
        channels: dict[str, Channel] = app[keys.CHANNELS]
        breaker = Breaker(app[keys.STORE], config.breaker, owner_channels, app[keys.ALERTS])
        worker = Worker(
            app[keys.STORE], channels, app[keys.RENDERER], config, breaker=breaker, metrics=metrics
        )
    app[keys.WORKER] = worker
    responder = Responder(config, app[keys.STORE], app[keys.BLOCKS], app[keys.ALERTS], metrics)
    app[keys.RESPONDER] = responder
    events = EventWriter(config.privacy.events_path) if config.privacy.events_path else None
    app[keys.RECORDER] = LoginRecorder(
        config,
        app[keys.STORE],
        lambda: app[keys.RESOLVER],
        owner_channels,
        # called on this loop; crosses to the worker's loop, coalesced (Worker.wake)
        on_notice=worker.wake,
        events=events,
        on_origin=lambda origin: _count_unknown(metrics, origin),
        blocks=app[keys.BLOCKS],
        on_blocked=responder.blocked_login,
        on_hijack=responder.hijacked,
        # a forget here, or one another node made (it moves the store's block version), voids
        # the cached histories
        history_version=lambda: (app[keys.STORE].forgotten, app[keys.BLOCKS].version),
    )
    yield
    if delivery is not None and not await delivery.stop() and worker.owner:
        # the thread is stuck (in closing its channels or its store): put back what its worker
        # may still hold through this loop's store rather than wait for the lease
        with contextlib.suppress(StoreError):
            released = await app[keys.STORE].release_claims(worker.owner, time.time())
            if released:
                log.info("%d deliveries in flight put back in the queue", released)
    await responder.drain()
    if events is not None:
        events.close()


async def _pages_ctx(app: web.Application) -> AsyncIterator[None]:
    """The owner's pages on ``[web] listen``, when set."""
    config = app[keys.CONFIG]
    if not config.web.listen:
        yield
        return
    pages = OwnerPages(config, app[keys.STORE], app[keys.RENDERER], app[keys.RESPONDER])
    async with pages_listener(config, pages_app(pages), app[keys.REUSE_PORT]):
        yield


async def _blocks_ctx(app: web.Application) -> AsyncIterator[None]:
    blocks = BlockSet(
        app[keys.STORE],
        app[keys.METRICS],
        accounts=app[keys.CONFIG].accounts,
        locate=app[keys.RESOLVER].locate,  # the resolver stays, its data may change
    )
    # a start without the blocks would let blocked origins in: a store failure stops it
    await blocks.refresh()
    if blocks:
        log.info("blocks: %d in force", len(blocks))
    app[keys.BLOCKS] = blocks
    task = asyncio.create_task(blocks.run(), name="blocks-refresh")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _geo_guard_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    await check_geo_change(
        app[keys.STORE],
        app[keys.RESOLVER],
        config.geoip,
        config.geo_guard,
        app[keys.ALERTS],
        reload=False,
    )
    yield


async def reload_geo(app: web.Application) -> bool:
    """Open the geo files again; the guard decides whether the new data replaces the old."""
    config = app[keys.CONFIG]
    old = app[keys.RESOLVER]
    try:
        new = await asyncio.to_thread(OriginResolver.from_config, config.geoip)
    except Exception:
        log.exception("geo data not reloaded")
        return False
    new.networks = old.networks
    missing = new.missing(config.geoip)
    if missing:
        # a file that cannot be read now is no reason to lose the one in use
        log.error("geo data not reloaded, keeping the data in use: %s", "; ".join(missing))
        new.close()
        return False
    try:
        accepted = await check_geo_change(
            app[keys.STORE], new, config.geoip, config.geo_guard, app[keys.ALERTS], reload=True
        )
    except Exception:
        log.exception("geo data not reloaded: the guard failed")
        accepted = False
    if not accepted:
        new.close()
        return False
    retired = old.take_data(new)
    for part, source in old.describe().items():
        log.info("origin %s reloaded: %s", part, source)
    # requests already resolving finish with the old readers; close them a little later
    asyncio.get_running_loop().call_later(5, retired.close)
    return True


def _count_unknown(metrics: Metrics, origin: Origin) -> None:
    if origin.country is None:
        metrics.unknown.labels("country").inc()
    if origin.provider is None:
        metrics.unknown.labels("provider").inc()


async def _monitoring_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    metrics = app[keys.METRICS]
    resolver = app[keys.RESOLVER]

    def geo_loaded() -> str:
        missing = resolver.missing(config.geoip)
        for part, built in resolver.built().items():
            if built is not None:
                metrics.geo_age.labels(part).set(max(0.0, time.time() - built))
        return "; ".join(missing)

    store = app[keys.STORE]

    def worker_running() -> str:
        """Why deliveries are not being made by this process ("" when they are)."""
        delivery = app.get(keys.DELIVERY)
        if delivery is None:
            return ""  # left to `policy-server worker` processes
        if not delivery.running:
            return "delivery worker stopped"  # its task or its thread ended
        return app[keys.WORKER].failure

    monitoring = monitoring_app(
        metrics,
        store,
        {"writer": store.writer_problem, "worker": worker_running, "geo": geo_loaded},
    )
    async with monitoring_listener(config.metrics, monitoring, app[keys.REUSE_PORT]):
        yield


async def _stopping(app: web.Application) -> None:
    notify("STOPPING=1")


async def _freeze_heap(app: web.Application) -> None:
    """Keep what start-up loaded (geo readers, templates, config) out of garbage collection.

    Those objects live as long as the process; without this every full collection walks all of
    them again, a pause that shows in the slowest answers.
    """
    gc.collect()
    gc.freeze()


def create_app(
    config: Config, run_worker: bool = True, reuse_port: bool = False
) -> web.Application:
    """The service as an aiohttp application; resources open on startup, close on cleanup.

    The application's loop answers Dovecot (and serves the owner's pages and the monitoring
    listener); the delivery worker runs on a thread and loop of its own. ``run_worker=False``
    runs no worker and leaves deliveries to separate ``policy-server worker`` processes.
    """
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[keys.CONFIG] = config
    app[keys.RUN_WORKER] = run_worker
    app[keys.REUSE_PORT] = reuse_port
    metrics = Metrics()
    app[keys.METRICS] = metrics
    app[keys.STATS] = Stats(metrics=metrics)
    app[keys.AUTH] = Authenticator(config.server)
    app.cleanup_ctx.extend(
        [
            _origin_ctx,
            _store_ctx,
            _blocks_ctx,
            _channels_ctx,
            _geo_guard_ctx,
            _worker_ctx,
            _pages_ctx,
            _monitoring_ctx,
        ]
    )
    app.on_startup.append(_freeze_heap)
    app.on_shutdown.append(_stopping)
    app.router.add_route("*", "/{tail:.*}", timed_endpoint)
    return app
