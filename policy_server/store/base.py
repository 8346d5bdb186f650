"""The store's interfaces, one per caller, and the values that cross them.

* ``LoginStore``: the login path (the recorder): read a history, record a login.
* ``QueueStore``: the delivery side (the worker, the breaker): claim, finish, the rules' reads.
* ``OperatorStore``: the operator commands, the metrics and the geo guard: reads and a few
  writes.

``Store`` is all three and the connection's life: what ``open_store`` returns. The one
implementation is the SQL store (``store/sql.py``) over a dialect per backend; no SQL leaves the
store package.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypedDict, runtime_checkable

from ..client import Client
from ..model import AccountSettings, History, KnownOrigin, Notice, Origin
from ..policy import Decision

# (history, origin, login time) -> decision
#: the policy's decision on a login: its account's history, origin, time and mail program
Decide = Callable[[History, Origin, float, Client | None], Decision]

# last_error of a delivery an operator released from hold starts with this
RELEASED = "released"
#: a claim's owner is "identity#incarnation": the worker identity (stable per node and slot)
#: and the process that claimed
INCARNATION = "#"


class StoreError(Exception):
    """The store could not do what was asked (locked, unreachable, corrupt)."""


class Overloaded(StoreError):
    """Too many writes are waiting (``[storage] max_pending_writes``): this one was refused
    at once, nothing was queued."""


class SchemaBehind(StoreError):
    """The store's schema is older than this version's, or not there at all, and opening it
    was asked not to migrate (``open(migrate=False)``): nothing was created or changed."""

    def __init__(self, store: str, found: int, newest: int) -> None:
        self.found = found
        self.newest = newest
        state = "is not set up yet" if found == 0 else f"is at schema version {found}"
        super().__init__(
            f"{store} {state}; this policy-server needs schema version {newest}:"
            " run `policy-server migrate`"
        )


class DeliveryStatus(StrEnum):
    """The state of one delivery (a notice through one channel), as stored in its row.

    ``DEFERRED`` is never stored: it is what a worker reports for a delivery it did not attempt
    (quiet hours, throttle); the store queues it again without counting the attempt.
    """

    QUEUED = "queued"
    SENDING = "sending"  # claimed by a worker, under a lease
    SENT = "sent"
    FOLDED = "folded"  # delivered inside another notice (``folded_into``)
    DEAD = "dead"  # failed for good
    UNDELIVERABLE = "undeliverable"  # no recipient for the channel
    HELD = "held"  # by the breaker or the geo guard, until released or discarded
    DISCARDED = "discarded"  # by an operator
    SHADOW = "shadow"  # rendered in dry-run mode, not sent
    DEFERRED = "deferred"


#: deliveries that some worker still has to deliver: their notice can take a login's service
UNDELIVERED = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)


@dataclass(frozen=True, slots=True)
class SuccessfulLogin:
    """A successful login to record; ``at`` is the report time in unix seconds."""

    account: str
    login: str
    protocol: str
    remote: str
    origin: Origin
    at: float
    # the mail program its IMAP ID names, if any
    client: Client | None = None


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

    * ``SENT``; ``FOLDED`` (delivered inside notice ``folded_into``; the delivery may be
      queued or claimed by the same owner);
    * ``QUEUED``: a failed attempt, retried at ``next_attempt``;
    * ``DEFERRED``: not attempted (quiet hours, throttle), due again at ``next_attempt``;
    * ``DEAD`` (failed for good) or ``UNDELIVERABLE`` (no recipient for the channel);
    * ``HELD`` (by the breaker or the geo guard, until released) or ``SHADOW`` (dry run).
    """

    notice_id: str
    channel: str
    status: DeliveryStatus
    error: str | None = None
    next_attempt: float | None = None
    folded_into: str | None = None


class DeliveryState(TypedDict):
    """One delivery of a notice, as ``outbox show`` lists it."""

    channel: str
    status: str
    attempts: int
    next_attempt: float | None
    deadline: float | None
    last_error: str | None
    folded_into: str | None
    updated: float | None


class ListedDelivery(TypedDict):
    """One delivery with its notice's facts, as ``outbox list`` shows it."""

    id: str
    channel: str
    status: str
    attempts: int
    next_attempt: float | None
    last_error: str | None
    account: str
    created: float
    reasons: list[str]


class AccountRecord(TypedDict):
    """Everything stored about one account, JSON-ready (``history export``)."""

    account: dict[str, Any]
    contact: dict[str, str | None] | None
    origins: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    notices: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    feedback: list[dict[str, Any]]
    settings: dict[str, Any]


class BlockKind(StrEnum):
    """What a block of an origin covers."""

    #: the origin's provider (``KnownOrigin.provider``: "AS64500", "org:...") in its country
    PROVIDER = "provider"
    #: the origin's network prefix
    PREFIX = "prefix"


class BlockSource(StrEnum):
    """Who made a block."""

    OWNER = "owner"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class BlockTarget:
    """What one block refuses: a provider in a country ("" when unknown), or a prefix
    (``country`` is then "")."""

    kind: BlockKind
    key: str
    country: str = ""

    def describe(self) -> str:
        if self.kind is BlockKind.PREFIX:
            return f"prefix {self.key}"
        return f"provider {self.key} in {self.country or 'an unknown country'}"


@dataclass(frozen=True, slots=True)
class Block:
    """An account's block of an origin, refused on ``allow`` until ``until`` (unix seconds)."""

    account: str
    target: BlockTarget
    created: float
    until: float
    source: BlockSource = BlockSource.OPERATOR
    notice_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``history export`` and ``blocks list`` show it."""
        return {
            "account": self.account,
            "kind": self.target.kind.value,
            "key": self.target.key,
            "country": self.target.country or None,
            "created": self.created,
            "until": self.until,
            "source": self.source.value,
            "notice_id": self.notice_id,
        }


class Answer(StrEnum):
    """An owner's answer to a notice."""

    #: "It was me": the notice's origin is the owner's
    CONFIRMED = "confirmed"
    #: "It wasn't me": the notice's origin is blocked for the account
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Feedback:
    """The owner's answer to one notice, with the notice's origin ("" where unknown)."""

    notice_id: str
    account: str
    answer: Answer
    at: float
    prefix: str
    country: str = ""
    provider: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``history export`` shows it."""
        return {
            "notice_id": self.notice_id,
            "answer": self.answer.value,
            "at": self.at,
            "prefix": self.prefix,
            "country": self.country or None,
            "provider": self.provider or None,
        }


@dataclass(frozen=True, slots=True)
class ActiveBlocks:
    """Every active block and the store's block version they were read at."""

    version: int
    blocks: tuple[Block, ...]


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


# -- the login path ----------------------------------------------------------------------------


class LoginStore(Protocol):
    """What the login path needs: one read per report, and the group-committed writes."""

    #: how many accounts were forgotten through this store object (histories read before
    #: may name origins that are gone)
    forgotten: int

    async def history(self, account: str) -> History:
        """The account's known origins: one indexed read."""
        ...

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
        logins of one account cannot both be "first". What a login from a known origin writes
        is ``policy.repeat_writes``: nothing for a fresh repeat; a login from the origin of a
        notice of the last ``coalesce_s`` seconds that is not delivered yet adds its protocol
        to that notice. A new notice's deliveries wait ``hold_s``. Returns after the commit.
        """
        ...

    async def record_failure(self, account: str, at: float) -> None:
        """Count a failed login for an existing account; never creates history."""
        ...


@runtime_checkable
class ImmediateHistory(Protocol):
    """An optional capability of a login store: reading a history without waiting.

    A store whose history read costs less than a hand-off (SQLite: an indexed point read from
    the page cache, on the event loop) offers it, and the recorder answers a fresh repeat login
    before it ever awaits. A store without it (PostgreSQL: a round trip) is read with
    ``LoginStore.history``.
    """

    def history_now(self, account: str) -> History:
        """The account's known origins, read on the calling thread."""
        ...


# -- the delivery side -------------------------------------------------------------------------


class Controls(Protocol):
    """The switches every process sharing the store obeys (pause, breaker, geo guard)."""

    async def control(self, name: str) -> dict[str, Any] | None:
        """A shared switch, or None when never set."""
        ...

    async def set_control(
        self, name: str, value: dict[str, Any], now: float, unless: tuple[str, Any] | None = None
    ) -> bool:
        """Set a switch; with ``unless=(key, v)`` only when its ``key`` is not already ``v``
        (compare and set across processes). True when it changed."""
        ...


class QueueStore(Controls, Protocol):
    """What the delivery worker and the breaker need."""

    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Delivery]:
        """Take up to ``limit`` due deliveries (or ones whose lease expired) for ``owner``."""
        ...

    async def finish(
        self, owner: str, results: Sequence[DeliveryResult], now: float
    ) -> list[DeliveryResult]:
        """Write the outcome of claimed deliveries in one transaction; an unknown status is a
        StoreError and writes nothing. A result whose delivery is no longer ``owner``'s claim
        (its lease ran out and another worker took it) is not written: the lost ones are
        returned."""
        ...

    async def renew(self, owner: str, until: float) -> set[tuple[str, str]]:
        """Extend every claim ``owner`` still holds to ``until``; returns the (notice id,
        channel) pairs it holds."""
        ...

    async def release_claims(self, owner: str, now: float) -> int:
        """Give back what ``owner`` claimed and did not finish (queued again, the claim's
        attempt not counted); returns how many."""
        ...

    async def take_back(self, identity: str, now: float) -> int:
        """Give back the claims of every earlier incarnation of worker ``identity`` (claims
        ``identity#...``): what a restarted process left unfinished is due again at once."""
        ...

    async def lock_identity(self, base: str) -> str:
        """The first free worker identity ``base/N``, held by this store until it closes: no
        two live processes ever share one, so a process may take back its identity's claims."""
        ...

    async def contact(self, account: str) -> Contact | None:
        """The account's contact row, if any."""
        ...

    async def contacts(self, accounts: Collection[str]) -> dict[str, Contact]:
        """The contact rows of those of ``accounts`` that have one (one read for a batch)."""
        ...

    async def sent_times(self, account: str, channel: str, since: float) -> list[float]:
        """When notices of ``account`` went out through ``channel`` since ``since``."""
        ...

    async def sent_times_of(
        self, pairs: Collection[tuple[str, str]], since: float
    ) -> dict[tuple[str, str], list[float]]:
        """``sent_times`` of each (account, channel) of ``pairs``, in one read; a pair with
        none is absent."""
        ...

    async def waiting_notices(self, account: str, channel: str, until: float) -> list[Notice]:
        """The account's notices created up to ``until`` and still queued (not claimed) for
        ``channel``, oldest first: what a notice being sent can carry along."""
        ...

    async def waiting_notices_of(
        self, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[float, Notice]]]:
        """The notices still queued (not claimed) for each (account, channel) of ``pairs``
        with their creation times, oldest first, in one read; a pair with none is absent."""
        ...

    async def notice_rates(self, now: float, window_s: float, baseline_s: float) -> NoticeRates:
        """Counts of notices created in the last ``window_s`` and in the baseline before it."""
        ...

    async def hold_queued(
        self, since: float, channels: Sequence[str], reason: str, now: float
    ) -> int:
        """Hold the queued deliveries through ``channels`` created since ``since``."""
        ...

    async def housekeeping(
        self, now: float, address_retention_s: float, purge_origins_after_s: float
    ) -> dict[str, int]:
        """Cut stored client addresses older than the retention to their prefix, and delete
        origins unused for ``purge_origins_after_s`` of the account's activity."""
        ...


# -- blocks ------------------------------------------------------------------------------------


class Blocks(Protocol):
    """Accounts' blocks of origins: written by owners and operators, read by every node."""

    async def add_block(self, block: Block, now: float) -> Block:
        """Insert the block, or extend the one of the same account and target (its ``until``
        becomes the later of the two); returns the block as stored. Changes the version."""
        ...

    async def list_blocks(self, now: float, account: str | None = None) -> list[Block]:
        """The blocks active at ``now`` (of ``account``, or of every account), by account and
        creation time."""
        ...

    async def clear_blocks(self, account: str, targets: Sequence[BlockTarget] | None = None) -> int:
        """Delete the account's blocks (only those of ``targets`` when given, active or not);
        returns how many. Changes the version when it deleted any."""
        ...

    async def active_blocks(self, now: float, since_version: int) -> ActiveBlocks | None:
        """Every block active at ``now`` with the current version; None (one tiny read) when
        the version is still ``since_version``: nothing was added or deleted since."""
        ...


class Answers(Protocol):
    """Owners' answers to their notices ("It was me", "It wasn't me")."""

    async def record_answer(self, feedback: Feedback) -> Feedback:
        """Keep the answer to a notice; returns the answer as stored. A notice has one answer:
        a denial replaces a confirmation, anything else leaves the first answer (returned)."""
        ...

    async def answer_to(self, notice_id: str) -> Feedback | None:
        """The answer to a notice, if it has one."""
        ...


# -- operators ---------------------------------------------------------------------------------


class OperatorStore(Controls, Blocks, Answers, Protocol):
    """What operators (and the metrics and the geo guard, on their behalf) read and write."""

    async def contact(self, account: str) -> Contact | None:
        """The account's contact row, if any."""
        ...

    async def upsert_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        """Insert or replace contact rows in one transaction; returns how many."""
        ...

    async def remove_contact(self, account: str) -> bool:
        """Delete an account's contact row; False when there was none."""
        ...

    async def notice_detail(self, notice_id: str) -> tuple[Notice, list[DeliveryState]] | None:
        """A notice and its deliveries (channel, status, attempts, errors)."""
        ...

    async def retry(self, notice_id: str, now: float, deadline: float) -> int:
        """Queue a notice's dead or undeliverable deliveries again; returns how many."""
        ...

    async def purge(self, before: float) -> int:
        """Delete notices created before ``before`` with every delivery final; returns how many."""
        ...

    async def held_summary(self, filters: HeldFilter) -> dict[str, dict[str, int]]:
        """Held deliveries counted by reason, provider, country and channel."""
        ...

    async def release_held(
        self, filters: HeldFilter, now: float, per_second: float, note: str = RELEASED
    ) -> int:
        """Queue matching held deliveries again, oldest first, ``per_second`` at most; ``note``
        (starting with "released") marks them so that the breaker lets them through."""
        ...

    async def discard_held(self, filters: HeldFilter, note: str, now: float) -> int:
        """Mark matching held deliveries discarded, with ``note`` (who and when)."""
        ...

    async def sample_origins(self, limit: int) -> list[tuple[str, str | None, str | None]]:
        """Up to ``limit`` random known origins as (prefix, country, provider)."""
        ...

    async def settings(self, account: str) -> AccountSettings:
        """The account's settings (the defaults when it has none)."""
        ...

    async def save_settings(
        self, account: str, settings: AccountSettings, now: float
    ) -> AccountSettings:
        """Store the account's own choices (notices, trip); returns them as stored."""
        ...

    async def account_record(self, account: str, decisions: int = 50) -> AccountRecord | None:
        """Everything stored about an account (row, contact, origins, recent decisions,
        notices, blocks), as JSON-ready data; None when nothing is."""
        ...

    async def forget(self, account: str) -> dict[str, int]:
        """Delete everything stored about an account in one transaction; rows per table."""
        ...

    async def oldest_queued(self) -> float | None:
        """When the oldest delivery still queued was created (None: the queue is empty)."""
        ...

    async def outbox_counts(self) -> dict[str, int]:
        """Number of deliveries by status."""
        ...

    async def list_deliveries(
        self, status: str | None = None, limit: int = 100
    ) -> list[ListedDelivery]:
        """Recent deliveries with their notice's facts, newest first, for operators."""
        ...


class Store(LoginStore, QueueStore, OperatorStore, Blocks, Answers, Protocol):
    """Everything, and the connection's life: what a backend implements."""

    async def open(self, migrate: bool = True) -> None:
        """Connect and bring the schema up to date; with ``migrate=False`` create and change
        nothing, and raise ``SchemaBehind`` when the schema is older than the newest migration
        (or missing)."""
        ...

    async def close(self) -> None:
        """Finish pending writes and disconnect."""
        ...

    def writer_problem(self) -> str:
        """Why logins cannot be written now ("" while the group-commit writer runs)."""
        ...
