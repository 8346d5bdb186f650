"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..delivery.breaker import AdminAlerts
from ..delivery.channels.base import Channel
from ..delivery.render import Renderer
from ..delivery.thread import DeliveryThread
from ..delivery.worker import Worker
from ..origin.resolver import OriginResolver
from ..store.base import Store
from .auth import Authenticator
from .blocks import BlockSet
from .metrics import Metrics
from .recorder import LoginRecorder
from .response import Responder
from .stats import Stats

CONFIG = web.AppKey("config", Config)
STATS = web.AppKey("stats", Stats)
METRICS = web.AppKey("metrics", Metrics)
AUTH = web.AppKey("auth", Authenticator)
RESOLVER = web.AppKey("resolver", OriginResolver)
STORE = web.AppKey("store", Store)
RENDERER = web.AppKey("renderer", Renderer)
CHANNELS: web.AppKey[dict[str, Channel]] = web.AppKey("channels")
RECORDER = web.AppKey("recorder", LoginRecorder)
WORKER = web.AppKey("worker", Worker)
ALERTS = web.AppKey("alerts", AdminAlerts)
RUN_WORKER = web.AppKey("run_worker", bool)
REUSE_PORT = web.AppKey("reuse_port", bool)
#: the thread the delivery worker runs on (absent with ``run_worker=False``)
DELIVERY = web.AppKey("delivery", DeliveryThread)
BLOCKS = web.AppKey("blocks", BlockSet)
RESPONDER = web.AppKey("responder", Responder)
