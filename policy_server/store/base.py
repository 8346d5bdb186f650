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

Decide = Callable[[History, Origin], Decision]


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


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a worker did with a claimed delivery.

    ``status`` is ``sent``, ``queued`` (retry at ``next_attempt``) or ``dead``.
    """

    notice_id: str
    channel: str
    status: str
    error: str | None = None
    next_attempt: float | None = None


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

    @abc.abstractmethod
    async def record_success(
        self,
        login: SuccessfulLogin,
        decide: Decide,
        channels: Sequence[str],
        *,
        touch_after: float,
        deadline_s: float,
    ) -> Outcome:
        """Record a successful login and queue its notice in one committed transaction.

        ``decide`` runs against the history as it is inside the transaction, so two concurrent
        logins of one account cannot both be "first". A known origin whose ``last_seen`` is
        younger than ``touch_after`` seconds is not written again. Returns after the commit.
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

    @abc.abstractmethod
    async def outbox_counts(self) -> dict[str, int]:
        """Number of deliveries by status."""

    @abc.abstractmethod
    async def list_deliveries(
        self, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Recent deliveries with their notice's facts, newest first, for operators."""
