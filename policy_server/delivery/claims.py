"""A claimed batch's bookkeeping: its lease kept alive, each result written once it is known.

The worker claims a batch of deliveries under a lease. While they are delivered, this keeps the
lease renewed (a slow channel must not let a second worker claim and send the same notice),
writes each group's results as soon as they are known (a killed process re-sends only what was
in flight, not the whole batch), and notices when a claim was lost (its lease ran out while the
store could not be reached, and another worker took it): such a delivery is not sent, and its
result is not written over the new owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence

from ..service.metrics import Metrics
from ..store.base import Delivery, DeliveryResult, DeliveryStatus, QueueStore, StoreError

log = logging.getLogger("policy_server.worker")
S = DeliveryStatus

#: a failed write of results is tried again after this long, doubling up to the maximum
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0

Key = tuple[str, str]


def key_of(delivery: Delivery) -> Key:
    return (delivery.notice.id, delivery.channel)


class ClaimedBatch:
    """One claimed batch of ``owner``, from the claim until every result is written."""

    def __init__(
        self,
        store: QueueStore,
        owner: str,
        deliveries: Sequence[Delivery],
        lease_s: float,
        claimed_at: float,
        stopping: asyncio.Event,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._lease_s = lease_s
        self._stopping = stopping
        self._metrics = metrics
        self._pending: set[Key] = {key_of(d) for d in deliveries}
        self._lost: set[Key] = set()
        #: until when the claims are known to be ours (the last lease the store confirmed)
        self.held_until = claimed_at + lease_s
        self._unwritten: list[DeliveryResult] = []
        self._writer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        #: results written, and results not written because their claim was lost
        self.written: list[DeliveryResult] = []
        self.lost: list[DeliveryResult] = []

    # -- while delivering ----------------------------------------------------------------------

    def start(self) -> None:
        """Keep the lease renewed from now until ``close``."""
        self._renewer = asyncio.create_task(self._keep_renewed(), name="lease-renewal")

    def holds(self, delivery: Delivery, now: float | None = None) -> bool:
        """Whether ``delivery`` may be sent now: its claim is not known lost, and the lease
        the store last confirmed still has a third of its length to run (so a claim whose
        renewals failed is not sent while another worker may take it)."""
        now = time.time() if now is None else now
        if key_of(delivery) in self._lost:
            return False
        return self.held_until - now > self._lease_s / 3

    def record(self, results: Iterable[DeliveryResult]) -> None:
        """Write ``results`` as soon as possible (with those of other groups that finish
        meanwhile, in one transaction)."""
        self._unwritten.extend(results)
        if self._unwritten and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write(), name="delivery-results")

    async def _keep_renewed(self) -> None:
        interval = self._lease_s / 3
        while self._pending:
            await asyncio.sleep(interval)
            asked = time.time()
            try:
                held = await self._store.renew(self._owner, asked + self._lease_s)
            except StoreError as exc:
                log.warning("cannot renew the lease of %d claims: %s", len(self._pending), exc)
                continue
            self.held_until = asked + self._lease_s
            for key in sorted(self._pending - held - self._lost):
                self._lose(key, "its lease ran out and another worker took it")

    def _lose(self, key: Key, why: str) -> None:
        self._lost.add(key)
        log.warning("claim of notice %s through %s lost: %s", key[0], key[1], why)
        if self._metrics is not None:
            self._metrics.claims_lost.inc()

    async def _write(self) -> None:
        delay = RETRY_FIRST_S
        while self._unwritten:
            batch, self._unwritten = self._unwritten, []
            try:
                lost = await self._store.finish(self._owner, batch, time.time())
            except StoreError as exc:
                self._unwritten[:0] = batch
                if self._stopping.is_set():
                    return  # stopping: close() tries once more, then leaves it to the lease
                log.warning("cannot record %d delivery results yet (retrying): %s", len(batch), exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self._written(batch, lost)

    def _written(self, batch: list[DeliveryResult], lost: list[DeliveryResult]) -> None:
        lost_keys = {(r.notice_id, r.channel) for r in lost}
        for result in lost:
            key = (result.notice_id, result.channel)
            if key not in self._lost:
                self._lose(key, f"another worker owns it; its result ({result.status}) dropped")
        self.lost.extend(lost)
        for result in batch:
            key = (result.notice_id, result.channel)
            self._pending.discard(key)
            if key in lost_keys:
                continue
            self.written.append(result)
            if self._metrics is not None:
                outcome = "retried" if result.status == S.QUEUED else result.status
                self._metrics.deliveries.labels(result.channel, outcome).inc()

    # -- the end -------------------------------------------------------------------------------

    async def close(self) -> list[DeliveryResult]:
        """Wait until every recorded result is written (retrying while the store is down,
        until the worker is stopped), then stop renewing; returns what could not be written.

        What stays unwritten is still claimed: once the lease runs out it is delivered again
        (with the same ``id``), the one case of a notice sent twice.
        """
        while self._unwritten or (self._writer is not None and not self._writer.done()):
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write(), name="delivery-results")
            await asyncio.shield(self._writer)
            if self._unwritten and self._stopping.is_set():
                break
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if self._unwritten:
            # one last try, now that nothing else writes
            with contextlib.suppress(StoreError):
                lost = await self._store.finish(self._owner, self._unwritten, time.time())
                batch, self._unwritten = self._unwritten, []
                self._written(batch, lost)
        if self._unwritten:
            log.error(
                "%d delivery results not recorded (store unavailable); those notices will be"
                " delivered again when their lease runs out",
                len(self._unwritten),
            )
        return list(self._unwritten)
