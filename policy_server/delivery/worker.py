"""The delivery worker: claims due notices from the store and sends them through channels.

Retry state lives in the queue rows, never in memory: a notice that failed for a while is
rescheduled in its row with exponential backoff and jitter. A worker's claims carry its identity
(one per node and slot, see ``Worker.start``): a restarted process takes back at once what its
predecessor left claimed, and any other worker takes over a claim whose lease ran out (the
receiver sees the same ``id`` again). The bookkeeping of a claimed batch (lease renewal, results
written as they come, lost claims) is in ``claims.py``.

A worker runs on one event loop, the one ``run_forever`` (or ``run``) runs on; ``serve`` gives
it a thread and a loop of its own (``thread.py``). ``wake``, ``stop`` and ``use_renderer`` may be
called from any thread: from another one they reach the worker through its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping

from ..config import ChannelConfig, Config, QueueConfig
from ..model import Notice
from ..policy import DAY_S
from ..service.metrics import Metrics
from ..store.base import (
    INCARNATION,
    RELEASED,
    Contact,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    QueueStore,
    StoreError,
)
from .breaker import GEO_HOLD, PAUSE, Breaker
from .channels.base import Channel
from .channels.errors import DeliveryError, TemporaryDeliveryError
from .claims import ClaimedBatch
from .render import Renderer
from .rules import quiet_until, recipient_for, throttled_until, zone

log = logging.getLogger("policy_server.worker")
S = DeliveryStatus

HOUSEKEEPING_INTERVAL_S = 3600.0
#: a worker that died is started again after this long, doubling up to the maximum
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Lookups:
    """What a claimed batch's deliveries read before they go, read once for the batch: the
    accounts' contacts, when each (account, channel) last sent (only with throttle rules), and
    the notices still queued behind each, with their creation times."""

    contacts: dict[str, Contact]
    sent: dict[tuple[str, str], list[float]]
    waiting: dict[tuple[str, str], list[tuple[float, Notice]]]


def incarnation() -> str:
    """What tells this process's claims from those of an earlier one with the same identity."""
    return f"{os.getpid()}.{random.getrandbits(32):08x}"


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
        store: QueueStore,
        channels: Mapping[str, Channel],
        renderer: Renderer,
        config: Config,
        owner: str | None = None,
        breaker: Breaker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._breaker = breaker
        #: why owner notices are held right now ("" = they are not), set before each claim
        self.holding = ""
        self.paused = False
        self._channels = channels
        self._renderer = renderer
        self._full = config
        self._config: QueueConfig = config.queue
        self._channel_configs: dict[str, ChannelConfig] = {c.name: c for c in config.channels}
        # the identity: given (tests, tools) or, at start, the first free slot of this node
        self._identity = owner
        #: "identity#incarnation", in every claim of this worker; set by start()
        self.owner = ""
        #: why the worker is not delivering ("" while it runs), for /readyz
        self.failure = ""
        self.restarts = 0
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        # the loop the worker runs on and its thread: the one it is built on until it runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        # a wake from another thread is on its way to the loop: later ones need not queue
        self._wake_queued = False
        self._rng = random.Random()
        self._outage_logged: set[str] = set()
        self.delivered = 0

    def use_renderer(self, renderer: Renderer) -> None:
        """Render with ``renderer`` from the next notice on (templates reloaded); any thread."""
        self._on_loop(lambda: setattr(self, "_renderer", renderer))

    def wake(self) -> None:
        """Look for due notices now rather than at the next poll; any thread, and cheap: wakes
        from another thread that come before the worker's loop handled the first are one."""
        if self._elsewhere():
            if self._wake_queued:
                return
            self._wake_queued = True
            if self._call_soon(self._woken):
                return
            self._wake_queued = False
        self._wakeup.set()

    def stop(self) -> None:
        """Stop after what is in flight (``run`` returns); any thread."""
        self._on_loop(self._stop_here)

    def _stop_here(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    def _woken(self) -> None:
        # cleared before the event is set: a wake that saw the flag came before this set
        self._wake_queued = False
        self._wakeup.set()

    def _elsewhere(self) -> bool:
        """Whether the caller is on another thread than the worker's running loop."""
        return self._loop is not None and threading.get_ident() != self._thread

    def _call_soon(self, callback: Callable[[], object]) -> bool:
        """``callback`` on the worker's loop, from another thread; False if that loop is closed."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: the worker runs no more
            return False
        return True

    def _on_loop(self, callback: Callable[[], object]) -> None:
        """``callback`` now when called on the worker's thread, else soon on its loop."""
        if not (self._elsewhere() and self._call_soon(callback)):
            callback()

    def _bind(self) -> None:
        """Run on the calling thread's loop from now on (``wake`` from elsewhere goes there)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake_queued = False

    async def start(self) -> None:
        """Take this worker's identity and what an earlier process of it left claimed.

        The identity is ``[queue] worker_id`` (the host's name by default) and the first slot
        of it no live process holds (``mail1/0``, ``mail1/1``, ...): stable across restarts,
        never shared by two live processes, so the claims it finds are its predecessor's and
        are due again at once rather than when their lease runs out.
        """
        if self.owner:
            return
        identity = self._identity or await self._store.lock_identity(
            self._config.worker_id or socket.gethostname()
        )
        taken = await self._store.take_back(identity, time.time())
        self.owner = f"{identity}{INCARNATION}{incarnation()}"
        if taken:
            log.info("took back %d deliveries an earlier %s left claimed", taken, identity)

    async def run_forever(self) -> None:
        """``run``, started again with backoff when it dies of something unexpected (a bug);
        ``failure`` says why while it waits."""
        self._bind()
        delay = RESTART_FIRST_S
        while not self._stopping.is_set():
            try:
                await self.run()
                return
            except Exception as exc:
                self.failure = f"died: {type(exc).__name__}: {exc}"[:300]
                log.critical(
                    "delivery worker died; starting it again in %.0f s", delay, exc_info=True
                )
            self.restarts += 1
            if self._metrics is not None:
                self._metrics.worker_restarts.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def run(self) -> None:
        """Claim and deliver until stopped; store errors are logged and retried. What is still
        claimed when it stops goes back to the queue."""
        self._bind()
        while not self.owner and not self._stopping.is_set():
            try:
                await self.start()
            except StoreError as exc:
                self.failure = f"cannot start: store unavailable: {exc}"[:300]
                log.warning("delivery worker: store unavailable: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._config.poll_interval_s)
        log.info("delivery worker %s started", self.owner)
        next_housekeeping = 0.0
        try:
            while not self._stopping.is_set():
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL_S
                    await self.housekeeping()
                # cleared before the round, not after: a wake that comes while it claims (a
                # notice committed just too late for its claim) makes the next round start at once
                self._wakeup.clear()
                try:
                    done = await self.run_once()
                except StoreError as exc:
                    log.warning("delivery worker: store unavailable: %s", exc)
                    done = 0
                else:
                    self.failure = ""
                if done:
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._config.poll_interval_s)
        finally:
            await self.release()
        log.info("delivery worker %s stopped", self.owner)

    async def release(self) -> int:
        """Put back in the queue what this worker claimed and did not finish."""
        if not self.owner:
            return 0
        try:
            released = await self._store.release_claims(self.owner, time.time())
        except StoreError as exc:
            log.warning("claims in flight left to their lease: store unavailable: %s", exc)
            return 0
        if released:
            log.info("%d deliveries in flight put back in the queue", released)
        return released

    async def housekeeping(self) -> dict[str, int]:
        """Cut old client addresses to their prefix and purge long-unused origins."""
        privacy, policy = self._full.privacy, self._full.policy
        try:
            counts = await self._store.housekeeping(
                time.time(),
                privacy.address_retention_days * DAY_S,
                policy.purge_after_days * DAY_S,
            )
        except StoreError as exc:
            log.warning("housekeeping skipped: store unavailable: %s", exc)
            return {}
        if any(counts.values()):
            log.info("housekeeping: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return counts

    async def run_once(self) -> int:
        """Claim one batch, deliver it, record each outcome; returns how many were claimed.

        Deliveries of one account through one channel are handled together: the newest notice
        goes out and carries the others, so a batch can neither send one person several
        messages at once nor slip past the per-account limit. Each group's results are written
        as soon as the group is done; a group that fails (the store, a bug) is given back to
        the queue without costing an attempt, and the others are recorded all the same.
        """
        await self.start()
        now = time.time()
        await self.refresh_controls(now)
        if self.paused:
            return 0
        batch = await self._store.claim(
            self.owner, self._config.batch_size, now, self._config.lease_s
        )
        if not batch:
            return 0
        claimed = ClaimedBatch(
            self._store,
            self.owner,
            batch,
            self._config.lease_s,
            now,
            self._stopping,
            self._metrics,
        )
        groups: dict[tuple[str, str], list[Delivery]] = {}
        for delivery in batch:
            groups.setdefault((delivery.notice.account, delivery.channel), []).append(delivery)
        limit = asyncio.Semaphore(self._config.concurrency)

        async def bounded(group: list[Delivery]) -> None:
            async with limit:
                try:
                    results = await self._deliver_group(group, claimed, lookups)
                except Exception as exc:
                    results = self._not_attempted(group, exc)
            claimed.record(results)

        claimed.start()
        try:
            try:
                lookups = await self._lookups(list(groups), now)
            except Exception as exc:
                for group in groups.values():
                    claimed.record(self._not_attempted(group, exc))
                return len(batch)
            await asyncio.gather(*(bounded(g) for g in groups.values()))
        finally:
            await claimed.close()
        return len(batch)

    async def _lookups(self, pairs: list[tuple[str, str]], now: float) -> Lookups:
        """Three reads for a batch rather than three per delivery."""
        contacts = await self._store.contacts([account for account, _ in pairs])
        sent: dict[tuple[str, str], list[float]] = {}
        since = self._throttle_since(now)
        if since is not None:
            sent = await self._store.sent_times_of(pairs, since)
        waiting = await self._store.waiting_notices_of(pairs)
        return Lookups(contacts, sent, waiting)

    def _throttle_since(self, now: float) -> float | None:
        """Since when sent notices count against the throttle rules (None: there are none)."""
        rules = self._full.delivery.throttle
        return now - max(rule.window_s for rule in rules) if rules else None

    def _not_attempted(self, group: list[Delivery], exc: Exception) -> list[DeliveryResult]:
        """A group that failed before anything was sent: due again soon, no attempt counted."""
        if isinstance(exc, StoreError):
            log.warning(
                "deliveries of %s put back: store unavailable: %s", group[0].notice.account, exc
            )
        else:
            log.exception(
                "deliveries of %s put back after an unexpected error", group[0].notice.account
            )
        at = time.time() + backoff(1, self._config, self._rng)
        error = f"not attempted: {type(exc).__name__}: {exc}"[:500]
        return [DeliveryResult(d.notice.id, d.channel, S.DEFERRED, error, at) for d in group]

    async def refresh_controls(self, now: float) -> None:
        """Read the shared switches: the pause, the breaker (evaluated now), the geo hold."""
        pause = await self._store.control(PAUSE)
        paused = bool(pause and pause.get("paused"))
        if paused != self.paused:
            log.warning("owner notices %s", "paused" if paused else "resumed")
        self.paused = paused
        holding = ""
        if self._breaker is not None:
            state = await self._breaker.evaluate(now)
            if state is not None:
                holding = f"held: breaker open: {state.get('cause', '')}"
        if not holding:
            geo = await self._store.control(GEO_HOLD)
            if geo and geo.get("hold"):
                holding = f"held: geo data changed: {geo.get('cause', '')}"
        self.holding = holding

    async def _deliver_group(
        self,
        group: list[Delivery],
        claimed: ClaimedBatch,
        lookups: Lookups,
        holding: bool = True,
    ) -> list[DeliveryResult]:
        if holding and self.holding:
            # admin channels get no queued deliveries: everything here is an owner notice;
            # what an operator released goes out
            held = [d for d in group if not d.released]
            group = [d for d in group if d.released]
            results = [
                DeliveryResult(d.notice.id, d.channel, S.HELD, self.holding[:500]) for d in held
            ]
            if not group:
                return results
            released = await self._deliver_group(group, claimed, lookups, holding=False)
            # a released delivery that has to wait again (a failure, quiet hours) stays
            # released: the breaker must not take it back
            return [
                *results,
                *(
                    dataclasses.replace(r, error=f"{RELEASED}; {r.error or ''}")
                    if r.status in (S.QUEUED, S.DEFERRED)
                    else r
                    for r in released
                ),
            ]
        group.sort(key=lambda d: d.notice.time)
        primary, carried = group[-1], group[:-1]
        outcome = await self._deliver(primary, [d.notice for d in carried], claimed, lookups)
        main = outcome[0]
        results = list(outcome)
        for other in carried:
            if main.status == S.SENT:
                results.append(
                    DeliveryResult(
                        other.notice.id, other.channel, S.FOLDED, folded_into=main.notice_id
                    )
                )
            else:
                # whatever held the newest back (quiet hours, throttle, an outage) holds these
                status = S.DEFERRED if main.status == S.QUEUED else main.status
                results.append(
                    DeliveryResult(
                        other.notice.id, other.channel, status, main.error, main.next_attempt
                    )
                )
        return results

    async def _deliver(
        self, delivery: Delivery, carried: list[Notice], claimed: ClaimedBatch, lookups: Lookups
    ) -> list[DeliveryResult]:
        notice = delivery.notice
        channel = self._channels.get(delivery.channel)
        channel_config = self._channel_configs.get(delivery.channel)
        now = time.time()

        def result(
            status: DeliveryStatus, error: str | None = None, at: float | None = None
        ) -> list[DeliveryResult]:
            return [DeliveryResult(notice.id, delivery.channel, status, error, at)]

        if channel is None or channel_config is None:
            return result(S.DEAD, f"channel {delivery.channel!r} is not configured")
        if now >= delivery.deadline and delivery.attempts > 1:
            # the deadline is for notices that keep failing; one held back by quiet hours or
            # the per-account limit is still owed to its owner, late as it is
            return result(S.DEAD, "deadline passed before delivery")
        key = (notice.account, delivery.channel)
        contact = lookups.contacts.get(notice.account)
        recipient = recipient_for(channel.recipient_kind, channel_config, contact, notice.login)
        if recipient is None:
            # final, and visible in the outbox: retrying cannot conjure an address
            return result(S.UNDELIVERABLE, f"no {channel.recipient_kind} address for this account")
        tz = zone(recipient.timezone, self._full.message.timezone)
        wake = quiet_until(
            now, channel_config.quiet_hours, tz, notice.reasons, channel_config.quiet_urgent
        )
        if wake is not None:
            return result(S.DEFERRED, "quiet hours", wake)
        since = self._throttle_since(now)
        if since is not None:
            sent = [at for at in lookups.sent.get(key, ()) if at >= since]
            free_at = throttled_until(sent, now, self._full.delivery.throttle)
            if free_at is not None:
                return result(S.DEFERRED, "throttled: per-account limit reached", free_at)
        until = notice.time.timestamp()
        waiting = [queued for created, queued in lookups.waiting.get(key, ()) if created <= until]
        folded = [*waiting, *carried]
        try:
            message = self._renderer.render(notice, recipient, folded)
        except Exception as exc:  # a template an admin broke: keep the notice, say why
            log.error("cannot render notice %s: %s", notice.id, exc)
            return result(S.DEAD, f"render failed: {exc}")
        if self._full.delivery.dry_run:
            log.info(
                "dry run: notice %s for %s through %s rendered, not sent",
                notice.id,
                notice.account,
                delivery.channel,
            )
            return [
                DeliveryResult(notice.id, delivery.channel, S.SHADOW),
                *(
                    DeliveryResult(other.id, delivery.channel, S.FOLDED, folded_into=notice.id)
                    for other in waiting
                ),
            ]
        if not claimed.holds(delivery):
            # its lease may have run out while the store could not renew it: another worker
            # may be sending it now; finish() will not write this over the new owner's
            return result(S.DEFERRED, "claim lost before sending", time.time())
        try:
            await channel.send(notice, message, recipient)
        except DeliveryError as exc:
            return [self._failed(delivery, exc)]
        except Exception as exc:  # a channel bug must not kill the worker
            log.exception("channel %s raised unexpectedly for notice %s", channel.name, notice.id)
            return [self._failed(delivery, TemporaryDeliveryError(f"unexpected error: {exc!r}"))]
        if delivery.channel in self._outage_logged:
            self._outage_logged.discard(delivery.channel)
            log.info("channel %s delivers again", delivery.channel)
        self.delivered += 1
        log.debug("notice %s delivered through %s", notice.id, delivery.channel)
        return [
            DeliveryResult(notice.id, delivery.channel, S.SENT),
            *(
                DeliveryResult(other.id, delivery.channel, S.FOLDED, folded_into=notice.id)
                for other in waiting
            ),
        ]

    def _failed(self, delivery: Delivery, exc: DeliveryError) -> DeliveryResult:
        notice_id = delivery.notice.id
        error = str(exc)[:500]
        if not exc.temporary:
            log.warning(
                "notice %s through %s failed permanently: %s", notice_id, delivery.channel, error
            )
            return DeliveryResult(notice_id, delivery.channel, S.DEAD, error)
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
            return DeliveryResult(notice_id, delivery.channel, S.DEAD, f"deadline passed: {error}")
        # An outage fails every notice of the channel; say so once, not once per notice.
        if delivery.channel not in self._outage_logged:
            self._outage_logged.add(delivery.channel)
            log.warning(
                "channel %s is failing, notices will be retried: %s", delivery.channel, error
            )
        return DeliveryResult(notice_id, delivery.channel, S.QUEUED, error, at)
