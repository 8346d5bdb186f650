"""The delivery worker: claims due notices from the store and sends them through channels.

Retry state lives in the queue rows, never in memory: a notice that failed for a while is
rescheduled in its row with exponential backoff and jitter, and a process that dies mid-delivery
has its claims taken over when their lease runs out (the receiver sees the same ``id`` again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Mapping

from .config import QueueConfig
from .notify.channels import Channel
from .notify.errors import DeliveryError, TemporaryDeliveryError
from .notify.render import Renderer
from .store.base import Delivery, DeliveryResult, Store, StoreError

log = logging.getLogger("policy_server.worker")


def owner_token() -> str:
    """A claim owner unique to this process incarnation."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


def backoff(attempts: int, config: QueueConfig, rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempts + 1``: exponential, capped, with jitter.

    The jitter keeps notices that failed together from retrying together.
    """
    ceiling = min(config.backoff_max_s, config.backoff_base_s * 2.0 ** max(attempts - 1, 0))
    return ceiling * rng.uniform(0.5, 1.0)


class Worker:
    """Delivers queued notices until ``stop()``; wake it early with ``wake()``."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel],
        renderer: Renderer,
        config: QueueConfig,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._channels = channels
        self._renderer = renderer
        self._config = config
        self.owner = owner or owner_token()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._rng = random.Random()
        self._outage_logged: set[str] = set()
        self.delivered = 0

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and deliver until stopped; store errors are logged and retried."""
        log.info("delivery worker %s started", self.owner)
        while not self._stopping.is_set():
            try:
                done = await self.run_once()
            except StoreError as exc:
                log.warning("delivery worker: store unavailable: %s", exc)
                done = 0
            if done:
                continue
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._config.poll_interval_s)
        log.info("delivery worker %s stopped", self.owner)

    async def run_once(self) -> int:
        """Claim one batch, deliver it, record the outcome; returns how many were claimed."""
        now = time.time()
        batch = await self._store.claim(
            self.owner, self._config.batch_size, now, self._config.lease_s
        )
        if not batch:
            return 0
        limit = asyncio.Semaphore(self._config.concurrency)

        async def bounded(delivery: Delivery) -> DeliveryResult:
            async with limit:
                return await self._deliver(delivery)

        results = await asyncio.gather(*(bounded(d) for d in batch))
        await self._store.finish(self.owner, results, time.time())
        return len(batch)

    async def _deliver(self, delivery: Delivery) -> DeliveryResult:
        notice = delivery.notice
        channel = self._channels.get(delivery.channel)
        now = time.time()

        def result(
            status: str, error: str | None = None, at: float | None = None
        ) -> DeliveryResult:
            return DeliveryResult(notice.id, delivery.channel, status, error, at)

        if channel is None:
            return result("dead", f"channel {delivery.channel!r} is not configured")
        if now >= delivery.deadline:
            return result("dead", "deadline passed before delivery")
        try:
            message = self._renderer.render(notice)
        except Exception as exc:  # a template an admin broke: keep the notice, say why
            log.error("cannot render notice %s: %s", notice.id, exc)
            return result("dead", f"render failed: {exc}")
        try:
            await channel.send(notice, message)
        except DeliveryError as exc:
            return self._failed(delivery, exc)
        except Exception as exc:  # a channel bug must not kill the worker
            log.exception("channel %s raised unexpectedly for notice %s", channel.name, notice.id)
            return self._failed(delivery, TemporaryDeliveryError(f"unexpected error: {exc!r}"))
        if delivery.channel in self._outage_logged:
            self._outage_logged.discard(delivery.channel)
            log.info("channel %s delivers again", delivery.channel)
        self.delivered += 1
        log.debug("notice %s delivered through %s", notice.id, delivery.channel)
        return result("sent")

    def _failed(self, delivery: Delivery, exc: DeliveryError) -> DeliveryResult:
        notice_id = delivery.notice.id
        error = str(exc)[:500]
        if not exc.temporary:
            log.warning(
                "notice %s through %s failed permanently: %s", notice_id, delivery.channel, error
            )
            return DeliveryResult(notice_id, delivery.channel, "dead", error)
        delay = backoff(delivery.attempts, self._config, self._rng)
        if exc.retry_after is not None:
            delay = min(max(delay, exc.retry_after), self._config.backoff_max_s)
        at = time.time() + delay
        if at >= delivery.deadline:
            log.warning(
                "notice %s through %s gave up at its deadline: %s",
                notice_id,
                delivery.channel,
                error,
            )
            return DeliveryResult(notice_id, delivery.channel, "dead", f"deadline passed: {error}")
        # An outage fails every notice of the channel; say so once, not once per notice.
        if delivery.channel not in self._outage_logged:
            self._outage_logged.add(delivery.channel)
            log.warning(
                "channel %s is failing, notices will be retried: %s", delivery.channel, error
            )
        return DeliveryResult(notice_id, delivery.channel, "queued", error, at)
