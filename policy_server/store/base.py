"""The store interface: history, the notice queue, and the records the request path writes.

Every backend keeps all of its SQL to itself; the rest of the service sees only this.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import History, KnownOrigin, Notice, Origin
from ..policy import Decision

# (history, origin, login time) -> decision
Decide = Callable[[History, Origin, float], Decision]


class StoreError(Exception):
    """The store could not do what was asked (locked, unreachable, corrupt)."""


@dataclass(frozen=True, slots=True)
class SuccessfulLogin:
    """A successful login to record; ``at`` is the report time in unix seconds."""

    account: str
    login: str
    protocol: str
    remote: str
    origin: Origin
    at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What recording a login did: the decision taken, the notice queued, whether it wrote."""

    decision: Decision
    notice_id: str | None = None
    wrote: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notice to deliver through one channel, as claimed by a worker."""

    notice: Notice
    channel: str
    attempts: int
    deadline: float
    # an operator released it from hold: the breaker must not hold it again
    released: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a worker did with a claimed delivery.

    ``status`` is one of:

    * ``sent``; ``folded`` (delivered inside notice ``folded_into``; the delivery may be
      queued or claimed by the same owner);
    * ``queued``: a failed attempt, retried at ``next_attempt``;
    * ``deferred``: not attempted (quiet hours, throttle), due again at ``next_attempt``;
    * ``dead`` (failed for good) or ``undeliverable`` (no recipient for the channel);
    * ``held`` (by the breaker or the geo guard, until released) or ``shadow`` (dry run).
    """

    notice_id: str
    channel: str
    status: str
    error: str | None = None
    next_attempt: float | None = None
    folded_into: str | None = None


@dataclass(frozen=True, slots=True)
class HeldFilter:
    """Which held deliveries an operator means; empty fields match everything."""

    reason: str = ""
    provider: str = ""
    country: str = ""
    account: str = ""


@dataclass(frozen=True, slots=True)
class NoticeRates:
    """Notices created in the current window and before it, for the fleet-wide breaker."""

    window: int
    baseline: int
    baseline_span_s: float
    by_reason: dict[str, int]
    top_provider: str | None
    top_provider_accounts: int
    top_country: str | None
    top_country_accounts: int


@dataclass(frozen=True, slots=True)
class Contact:
    """An account owner's addresses and preferences, from the contacts table."""

    account: str
    email: str | None = None
    phone: str | None = None
    language: str | None = None
    timezone: str | None = None


def origin_snapshot(known: KnownOrigin) -> dict[str, Any]:
    """A stored origin as kept in a notice's history snapshot."""
    return {
        "prefix": known.prefix,
        "country": known.country,
        "provider": known.provider,
        "as_org": known.as_org,
        "first_seen": known.first_seen,
        "last_seen": known.last_seen,
        "count": known.count,
    }


class Store(abc.ABC):
    """History and queue storage shared by the request path and the delivery worker."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    @abc.abstractmethod
    async def history(self, account: str) -> History:
        """The account's known origins: one indexed read."""

    def history_now(self, account: str) -> History | None:
        """The account's history if it can be read without waiting (None: use ``history``)."""
        return None

    @abc.abstractmethod
    async def record_success(
        self,
        login: SuccessfulLogin,
        decide: Decide,
        channels: Sequence[str],
        *,
        touch_after: float,
        deadline_s: float,
        hold_s: float = 0.0,
        coalesce_s: float = 0.0,
    ) -> Outcome:
        """Record a successful login and queue its notice in one committed transaction.

        ``decide`` runs against the history as it is inside the transaction, so two concurrent
        logins of one account cannot both be "first". A known origin whose ``last_seen`` is
        younger than ``touch_after`` seconds is not written again. A new notice's deliveries
        wait ``hold_s``; a login from the origin of a notice of the last ``coalesce_s`` seconds
        that is not delivered yet adds its protocol to that notice. Returns after the commit.
        """

    @abc.abstractmethod
    async def record_failure(self, account: str, at: float) -> None:
        """Count a failed login for an existing account; never creates history."""

    @abc.abstractmethod
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Delivery]:
        """Take up to ``limit`` due deliveries (or ones whose lease expired) for ``owner``."""

    @abc.abstractmethod
    async def finish(self, owner: str, results: Sequence[DeliveryResult], now: float) -> None:
        """Write the outcome of claimed deliveries in one transaction."""

    # -- recipients ------------------------------------------------------------------------

    @abc.abstractmethod
    async def contact(self, account: str) -> Contact | None:
        """The account's contact row, if any."""

    @abc.abstractmethod
    async def upsert_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        """Insert or replace contact rows in one transaction; returns how many."""

    @abc.abstractmethod
    async def remove_contact(self, account: str) -> bool:
        """Delete an account's contact row; False when there was none."""

    # -- delivery rules --------------------------------------------------------------------

    @abc.abstractmethod
    async def sent_times(self, account: str, channel: str, since: float) -> list[float]:
        """When notices of ``account`` went out through ``channel`` since ``since``."""

    @abc.abstractmethod
    async def waiting_notices(self, account: str, channel: str, until: float) -> list[Notice]:
        """The account's notices created up to ``until`` and still queued (not claimed) for
        ``channel``, oldest first: what a notice being sent can carry along."""

    # -- operators -------------------------------------------------------------------------

    @abc.abstractmethod
    async def notice_detail(self, notice_id: str) -> tuple[Notice, list[dict[str, Any]]] | None:
        """A notice and its deliveries (channel, status, attempts, errors)."""

    @abc.abstractmethod
    async def retry(self, notice_id: str, now: float, deadline: float) -> int:
        """Queue a notice's dead or undeliverable deliveries again; returns how many."""

    @abc.abstractmethod
    async def purge(self, before: float) -> int:
        """Delete notices created before ``before`` with every delivery final; returns how many."""

    # -- controls, breaker and held notices -------------------------------------------------

    @abc.abstractmethod
    async def control(self, name: str) -> dict[str, Any] | None:
        """A shared switch (pause, breaker, geo fingerprints), or None when never set."""

    @abc.abstractmethod
    async def set_control(
        self, name: str, value: dict[str, Any], now: float, unless: tuple[str, Any] | None = None
    ) -> bool:
        """Set a switch; with ``unless=(key, v)`` only when its ``key`` is not already ``v``
        (compare and set across processes). True when it changed."""

    @abc.abstractmethod
    async def notice_rates(self, now: float, window_s: float, baseline_s: float) -> NoticeRates:
        """Counts of notices created in the last ``window_s`` and in the baseline before it."""

    @abc.abstractmethod
    async def hold_queued(
        self, since: float, channels: Sequence[str], reason: str, now: float
    ) -> int:
        """Hold the queued deliveries through ``channels`` created since ``since``."""

    @abc.abstractmethod
    async def held_summary(self, filters: HeldFilter) -> dict[str, dict[str, int]]:
        """Held deliveries counted by reason, provider, country and channel."""

    @abc.abstractmethod
    async def release_held(
        self, filters: HeldFilter, now: float, per_second: float, note: str = "released"
    ) -> int:
        """Queue matching held deliveries again, oldest first, ``per_second`` at most; ``note``
        (starting with "released") marks them so that the breaker lets them through."""

    @abc.abstractmethod
    async def discard_held(self, filters: HeldFilter, note: str, now: float) -> int:
        """Mark matching held deliveries discarded, with ``note`` (who and when)."""

    @abc.abstractmethod
    async def sample_origins(self, limit: int) -> list[tuple[str, str | None, str | None]]:
        """Up to ``limit`` random known origins as (prefix, country, provider)."""

    # -- privacy and history ---------------------------------------------------------------

    @abc.abstractmethod
    async def account_record(self, account: str, decisions: int = 50) -> dict[str, Any] | None:
        """Everything stored about an account (row, contact, origins, recent decisions,
        notices), as JSON-ready data; None when nothing is."""

    @abc.abstractmethod
    async def forget(self, account: str) -> dict[str, int]:
        """Delete everything stored about an account in one transaction; rows per table."""

    @abc.abstractmethod
    async def housekeeping(
        self, now: float, address_retention_s: float, purge_origins_after_s: float
    ) -> dict[str, int]:
        """Cut stored client addresses older than the retention to their prefix, and delete
        origins unused for ``purge_origins_after_s`` of the account's activity."""

    @abc.abstractmethod
    async def release_claims(self, owner: str, now: float) -> int:
        """Give back what ``owner`` claimed and did not finish (queued again, the claim's
        attempt not counted); returns how many."""

    @abc.abstractmethod
    async def oldest_queued(self) -> float | None:
        """When the oldest delivery still queued was created (None: the queue is empty)."""

    @abc.abstractmethod
    async def outbox_counts(self) -> dict[str, int]:
        """Number of deliveries by status."""

    @abc.abstractmethod
    async def list_deliveries(
        self, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Recent deliveries with their notice's facts, newest first, for operators."""
