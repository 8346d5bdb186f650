"""The fleet-wide breaker, the kill switch, and alerts to the operators' channels.

Per-account limits cannot see a storm in which every account gets one notice (a broken geo
database, a proxy that changed every client's address). The breaker watches the rate of notices
across all accounts; when it trips, owner notices are held (not sent, not lost) until an
operator releases or discards them. Its state lives in the store, so it survives restarts and
every process sharing the store obeys it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import BreakerConfig, ChannelConfig
from ..model import Notice
from ..store.base import NoticeRates, QueueStore
from .channels.base import Channel
from .channels.errors import DeliveryError
from .render import RenderedMessage
from .rules import recipient_for

log = logging.getLogger("policy_server.breaker")

BREAKER = "breaker"
PAUSE = "pause"
GEO_HOLD = "geo_hold"


@dataclass(frozen=True, slots=True)
class Trip:
    """Why the breaker trips: a short cause and the numbers behind it."""

    cause: str
    numbers: dict[str, Any]


def check(rates: NoticeRates, config: BreakerConfig) -> Trip | None:
    """Whether the notices of the current window should trip the breaker."""
    numbers: dict[str, Any] = {
        "window_s": config.window_s,
        "notices_in_window": rates.window,
        "by_reason": dict(sorted(rates.by_reason.items())),
    }
    windows = rates.baseline_span_s / config.window_s
    average = rates.baseline / windows if windows >= 1 else None
    if average is not None:
        numbers["baseline_per_window"] = round(average, 2)
    if rates.window > config.cap:
        return Trip(f"{rates.window} notices in {config.window_s:g}s, cap {config.cap}", numbers)
    if rates.top_provider_accounts > config.same_origin_accounts:
        numbers.update(provider=rates.top_provider, accounts=rates.top_provider_accounts)
        return Trip(
            f"{rates.top_provider_accounts} accounts with the same new provider "
            f"{rates.top_provider} (limit {config.same_origin_accounts})",
            numbers,
        )
    if rates.top_country_accounts > config.same_origin_accounts:
        numbers.update(country=rates.top_country, accounts=rates.top_country_accounts)
        return Trip(
            f"{rates.top_country_accounts} accounts with the same new country "
            f"{rates.top_country} (limit {config.same_origin_accounts})",
            numbers,
        )
    if (
        average is not None
        and rates.window >= config.min_notices
        and rates.window > config.factor * max(average, 1.0)
    ):
        return Trip(
            f"{rates.window} notices in {config.window_s:g}s, {config.factor:g}x over the "
            f"baseline of {average:.1f}",
            numbers,
        )
    return None


class AdminAlerts:
    """Sends operator alerts straight through the channels marked ``admin``."""

    def __init__(self, channels: Mapping[str, Channel], configs: Sequence[ChannelConfig]) -> None:
        self._targets = [(channels[c.name], c) for c in configs if c.admin and c.name in channels]

    async def send(self, subject: str, body: str) -> int:
        """Deliver one alert to every admin channel; returns how many took it."""
        now = datetime.now(UTC)
        notice = Notice(
            id=f"alert-{uuid.uuid4()}",
            account="",
            login="policy-server",
            reasons=(),
            protocol="",
            remote="",
            time=now,
            country=None,
            asn=None,
            as_org=None,
            prefix="",
        )
        message = RenderedMessage(subject=subject, body=body, short=subject, language="en")
        delivered = 0
        for channel, config in self._targets:
            recipient = recipient_for(channel.recipient_kind, config, None, "policy-server")
            try:
                await channel.send(notice, message, recipient)
                delivered += 1
            except DeliveryError as exc:
                log.error("alert through %s failed: %s", channel.name, exc)
            except Exception:
                log.exception("alert through %s failed", channel.name)
        return delivered


class Breaker:
    """Evaluates the notice rates and opens or closes the breaker in the store."""

    def __init__(
        self,
        store: QueueStore,
        config: BreakerConfig,
        owner_channels: Sequence[str],
        alerts: AdminAlerts,
    ) -> None:
        self._store = store
        self._config = config
        self._owner_channels = tuple(owner_channels)
        self._alerts = alerts

    async def evaluate(self, now: float | None = None) -> dict[str, Any] | None:
        """Check the current window; returns the breaker's state when open, else None."""
        now = time.time() if now is None else now
        state = await self._store.control(BREAKER)
        is_open = bool(state and state.get("state") == "open")
        if not self._config.enabled:
            return state if is_open else None
        window = self._config.window_s
        if not is_open and state is not None and state.get("closed_at"):
            # after a close, count only what came since: the storm that tripped it is over
            window = min(window, max(now - float(state["closed_at"]), 0.0))
        rates = await self._store.notice_rates(now, window, self._config.baseline_s)
        trip = check(rates, self._config)
        if trip is not None and not is_open:
            return await self._open(trip, now)
        if trip is not None and state is not None:
            if now - float(state.get("last_hot", 0)) >= 10:
                state = {**state, "last_hot": now}
                await self._store.set_control(BREAKER, state, now)
            return state
        if is_open and state is not None:
            quiet = now - float(state.get("last_hot", now))
            if self._config.close_after_s > 0 and quiet >= self._config.close_after_s:
                await self.close(f"automatically after {quiet:.0f}s without a tripping window", now)
                return None
            return state
        return None

    async def _open(self, trip: Trip, now: float) -> dict[str, Any] | None:
        state = {
            "state": "open",
            "opened_at": now,
            "last_hot": now,
            "cause": trip.cause,
            "numbers": trip.numbers,
        }
        # compare and set: of several processes seeing the same storm, one opens and alerts
        if not await self._store.set_control(BREAKER, state, now, unless=("state", "open")):
            return await self._store.control(BREAKER)
        held = await self._store.hold_queued(
            now - self._config.window_s, self._owner_channels, f"held: {trip.cause}", now
        )
        log.error("breaker open: %s; %d queued notices held; %s", trip.cause, held, trip.numbers)
        await self._alerts.send(
            "policy-server: notices held by the breaker",
            f"The fleet-wide breaker opened at {datetime.fromtimestamp(now, UTC).isoformat()}.\n"
            f"Cause: {trip.cause}\n"
            f"Numbers: {trip.numbers}\n"
            f"Queued notices held now: {held}; new owner notices are held while it is open.\n"
            "See them with `policy-server outbox held`; send them with `outbox release`, or "
            "drop them with `outbox discard`.\n",
        )
        return state

    async def close(self, why: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        state = {"state": "closed", "closed_at": now, "why": why}
        changed = await self._store.set_control(BREAKER, state, now, unless=("state", "closed"))
        if changed:
            log.warning("breaker closed %s; held notices stay held until released", why)
        return changed
