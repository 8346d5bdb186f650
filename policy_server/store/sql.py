"""The SQL store: every statement and every step of the store's logic, written once.

A backend (``sqlite.py``, ``postgres.py``) subclasses ``SQLStore`` with what truly differs: how
it connects, its ``reading()`` connection and its ``transaction()``, its history read, and a
``Dialect`` for the few statements that differ. The statements here use ``?`` placeholders (the
PostgreSQL connection numbers them) and only SQL that both databases run alike.

A login batch is written by the group-commit writer in one transaction: the histories and the
pending notices of the batch's accounts are read in it, ``plan.plan_batch`` decides without
I/O, and the rows it returns are written before the commit.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Any, ClassVar, Concatenate, ParamSpec, Protocol, TypeVar, cast

from ..config import StorageConfig
from ..model import NO_SETTINGS, AccountSettings, KnownOrigin, Notice
from .base import (
    INCARNATION,
    RELEASED,
    UNDELIVERED,
    AccountRecord,
    ActiveBlocks,
    Answer,
    Block,
    BlockKind,
    BlockSource,
    BlockTarget,
    Contact,
    Delivery,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    Feedback,
    HeldFilter,
    ListedDelivery,
    NoticeRates,
    Outcome,
    SchemaBehind,
    Store,
    StoreError,
)
from .batch import GroupCommit
from .plan import (
    Op,
    PendingNotice,
    RecordOp,
    account_settings,
    known_origin,
    notice_from_payload,
    plan_batch,
    prefetch_pending,
)

log = logging.getLogger("policy_server.store")

S = DeliveryStatus


class Connection(Protocol):
    """A connection (or a transaction on one) as the shared logic uses it; rows are sequences
    indexed by column position."""

    async def fetch(self, sql: str, *params: Any) -> list[Any]: ...

    async def fetch_dicts(self, sql: str, *params: Any) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; how many rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Dialect:
    """What differs between the backends' SQL, in the terms of the shared logic."""

    #: the folder under migrations/ with this backend's schema scripts
    name: ClassVar[str]
    #: creates the table of applied migrations
    schema_version: ClassVar[str]
    #: a row when that table exists
    has_schema_version: ClassVar[str]
    #: a cheap read (parameters: now, now) saying whether a claim would find anything, run
    #: before the claim's transaction; None: claim at once
    any_due: ClassVar[str | None] = None
    #: appended to a SELECT whose rows the transaction changes next ("": nothing to lock)
    lock_rows: ClassVar[str] = ""
    #: the decisions' column in insertion order, after their time
    decision_order: ClassVar[str]
    #: deliveries ``d`` with their notices ``n``, joined on the notices' primary key
    join_notices: ClassVar[str] = (
        "deliveries d JOIN notices n ON n.account = d.account AND n.id = d.notice_id"
    )
    #: joined after ``notices n``: one row ``r.value`` per reason of the notice
    reason_rows: ClassVar[str]
    #: a condition with one parameter: the notice ``n`` has that reason
    has_reason: ClassVar[str]
    #: cuts the client address of notices created before the parameter to its prefix
    scrub_addresses: ClassVar[str]

    def json_text(self, column: str, key: str) -> str:
        """The text of ``key`` in a JSON object column (NULL when missing)."""
        raise NotImplementedError

    def differs(self, key: str, value: Any) -> tuple[str, list[Any]]:
        """A condition on ``controls.value``: its ``key`` is not ``value``; and its parameters."""
        raise NotImplementedError

    def any_of(self, column: str, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        """Conditions ``column`` is one of ``values``, with their parameters: one per query,
        every value in exactly one."""
        raise NotImplementedError

    async def lock_accounts(self, conn: Connection, accounts: Sequence[str]) -> None:
        """Lock the accounts a transaction writes, where writers can run side by side."""

    async def claim_due(
        self, conn: Connection, owner: str, limit: int, now: float, lease_until: float
    ) -> list[tuple[str, str, int, float, str | None]]:
        """Take due deliveries (or ones whose lease ran out) for ``owner`` inside ``conn``'s
        transaction: (notice id, channel, attempts with this one, deadline, last error)."""
        raise NotImplementedError


def migrations(dialect: str) -> list[tuple[int, str]]:
    """The numbered schema scripts of a backend, in order."""
    folder = resources.files("policy_server.store").joinpath("migrations", dialect)
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _larger(a: str, b: str) -> str:
    return f"CASE WHEN {a} >= {b} THEN {a} ELSE {b} END"


def _smaller(a: str, b: str) -> str:
    return f"CASE WHEN {a} <= {b} THEN {a} ELSE {b} END"


def _in(*statuses: DeliveryStatus) -> str:
    return "(" + ", ".join(f"'{s}'" for s in statuses) + ")"


def _text(value: Any) -> str:
    """A JSON column as text, whatever the driver returns for it."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_ORIGIN_COLUMNS = (
    "prefix, country, provider, as_org, first_seen, last_seen, count, network, clients,"
    " latitude, longitude, radius_km, confirmed"
)
SELECT_ORIGINS = f"SELECT {_ORIGIN_COLUMNS} FROM origins WHERE account = ?"
# ... of several accounts, the account last ({values}: a condition on account)
SELECT_HISTORIES = f"SELECT {_ORIGIN_COLUMNS}, account FROM origins WHERE {{values}}"
HISTORY_ACCOUNT = 13
_SETTINGS_COLUMNS = "notices, trip_country, trip_until, alerted_at"
SELECT_SETTINGS = f"SELECT {_SETTINGS_COLUMNS}, account FROM account_settings WHERE {{values}}"
UPSERT_ALERT = (
    "INSERT INTO account_settings (account, alerted_at, updated) VALUES (?, ?, ?)"
    " ON CONFLICT (account) DO UPDATE SET alerted_at = excluded.alerted_at"
)
UPSERT_SETTINGS = (
    "INSERT INTO account_settings (account, notices, trip_country, trip_until, updated)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET notices = excluded.notices,"
    " trip_country = excluded.trip_country, trip_until = excluded.trip_until,"
    " updated = excluded.updated"
)
# housekeeping's purge of origins not used for a long while, a range of accounts at a time:
# the last account of the next PURGE_CHUNK_ROWS origin rows after one, then the purge of
# those accounts (or of all the rest)
PURGE_CHUNK_ROWS = 20_000
PURGE_RANGE_END = "SELECT account FROM origins WHERE account > ? ORDER BY account LIMIT 1 OFFSET ?"
_PURGE = (
    "DELETE FROM origins WHERE {accounts} AND last_seen < (SELECT max(o.last_seen)"
    " FROM origins o WHERE o.account = origins.account) - ?"
)
PURGE_RANGE = _PURGE.format(accounts="account > ? AND account <= ?")
PURGE_REST = _PURGE.format(accounts="account > ?")
DELETE_ORIGIN = (
    "DELETE FROM origins WHERE account = ? AND prefix = ? AND country = ? AND provider = ?"
)
# the owner's answer about an origin: "It was me" confirms it, "It wasn't me" takes that back
CONFIRM_ORIGIN = (
    "UPDATE origins SET confirmed = ? WHERE account = ? AND prefix = ? AND country = ?"
    " AND provider = ?"
)
# Notices of the accounts ({values}: a condition on n.account) some channel has not delivered
# yet, created since the parameter.
SELECT_PENDING = (
    "SELECT n.id, n.account, n.origin_key, n.created, n.payload FROM notices n"
    " WHERE {values} AND n.created >= ?"
    " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.account = n.account"
    f"  AND d.notice_id = n.id AND d.status IN {_in(*UNDELIVERED)})"
)
# What the worker reads once per claimed batch ({values}: a condition on the account): the
# contacts, the sent times, and the notices still queued ({join}: the dialect's
# deliveries-with-notices join)
SELECT_CONTACTS = "SELECT account, email, phone, language, timezone FROM contacts WHERE {values}"
SELECT_SENT = (
    "SELECT account, channel, updated FROM deliveries WHERE {values}"
    f" AND status IN {_in(S.SENT, S.SHADOW)} AND updated >= ? ORDER BY updated"
)
SELECT_WAITING = (
    "SELECT d.account, d.channel, n.created, n.payload FROM {join} WHERE {values}"
    f" AND d.status = '{S.QUEUED}' ORDER BY n.created"
)
# a write adds its count (1, or a replaced row's logins) and keeps the earliest first use
UPSERT_ORIGIN = (
    f"INSERT INTO origins (account, {_ORIGIN_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account, prefix, country, provider) DO UPDATE SET"
    f" last_seen = {_larger('origins.last_seen', 'excluded.last_seen')},"
    f" first_seen = {_smaller('origins.first_seen', 'excluded.first_seen')},"
    " count = origins.count + excluded.count,"
    " as_org = coalesce(excluded.as_org, origins.as_org),"
    " network = coalesce(origins.network, excluded.network),"
    " clients = coalesce(excluded.clients, origins.clients),"
    " latitude = coalesce(excluded.latitude, origins.latitude),"
    " longitude = coalesce(excluded.longitude, origins.longitude),"
    " radius_km = coalesce(excluded.radius_km, origins.radius_km),"
    " confirmed = coalesce(excluded.confirmed, origins.confirmed)"
)
UPSERT_ACCOUNT = (
    "INSERT INTO accounts (account, first_seen, last_seen, logins) VALUES (?, ?, ?, 1)"
    " ON CONFLICT (account) DO UPDATE SET"
    f" last_seen = {_larger('accounts.last_seen', 'excluded.last_seen')},"
    " logins = accounts.logins + 1"
)
COUNT_FAILURE = "UPDATE accounts SET failures = failures + 1, last_failure = ? WHERE account = ?"
INSERT_NOTICE = (
    "INSERT INTO notices (id, account, created, reasons, payload, origin_key)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_DELIVERY = (
    "INSERT INTO deliveries (notice_id, channel, account, status, next_attempt, deadline,"
    f" created, updated) VALUES (?, ?, ?, '{S.QUEUED}', ?, ?, ?, ?)"
)
INSERT_DECISION = (
    "INSERT INTO decisions (account, at, protocol, prefix, country, provider, network, reasons,"
    " notified, note, notice_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_PAYLOAD = "UPDATE notices SET payload = ? WHERE account = ? AND id = ?"

_BLOCK_COLUMNS = "account, kind, key, country, created, until, source, notice_id"
# a block again extends it: the later end wins, the first creation and notice stay
UPSERT_BLOCK = (
    f"INSERT INTO blocks ({_BLOCK_COLUMNS}, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account, kind, key, country) DO UPDATE SET"
    f" until = {_larger('blocks.until', 'excluded.until')},"
    " notice_id = coalesce(blocks.notice_id, excluded.notice_id),"
    " source = excluded.source, updated = excluded.updated"
)
SELECT_BLOCK = (
    f"SELECT {_BLOCK_COLUMNS} FROM blocks"
    " WHERE account = ? AND kind = ? AND key = ? AND country = ?"
)
# every write to the blocks bumps the version, in its transaction: a node whose set was read
# at the current version has nothing to read again
BUMP_BLOCKS = "UPDATE block_version SET version = version + 1"
BLOCKS_VERSION = "SELECT version FROM block_version"


_FEEDBACK_COLUMNS = "notice_id, account, answer, at, prefix, country, provider"
# one answer per notice: a denial replaces a confirmation (the owner thought again), nothing
# replaces a denial (whoever reads the owner's mail must not lift a block by confirming)
UPSERT_FEEDBACK = (
    f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (notice_id) DO UPDATE SET answer = excluded.answer, at = excluded.at"
    f" WHERE feedback.answer = '{Answer.CONFIRMED}' AND excluded.answer = '{Answer.DENIED}'"
)
SELECT_FEEDBACK = f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE notice_id = ?"


def _feedback(row: Sequence[Any]) -> Feedback:
    notice_id, account, answer, at, prefix, country, provider = row
    return Feedback(
        notice_id=str(notice_id),
        account=str(account),
        answer=Answer(answer),
        at=float(at),
        prefix=str(prefix),
        country=str(country or ""),
        provider=str(provider or ""),
    )


def _block(row: Sequence[Any]) -> Block:
    account, kind, key, country, created, until, source, notice_id = row
    return Block(
        account=str(account),
        target=BlockTarget(BlockKind(kind), str(key), str(country or "")),
        created=float(created),
        until=float(until),
        source=BlockSource(source),
        notice_id=notice_id,
    )


_GIVE_BACK = _larger("attempts - 1", "0")
_UNCLAIM = "claimed_by = NULL, lease_until = NULL"
_CLAIMED = f"WHERE notice_id = ? AND channel = ? AND claimed_by = ? AND status = '{S.SENDING}'"
# What a worker's result writes, by status; the parameters are in finish()'s order. A row that
# is no longer this owner's claim (its lease ran out and another worker took it) is not written.
FINISH = {
    S.SENT: f"UPDATE deliveries SET status = '{S.SENT}', last_error = NULL, {_UNCLAIM},"
    f" updated = ? {_CLAIMED}",
    S.QUEUED: f"UPDATE deliveries SET status = '{S.QUEUED}', last_error = ?, next_attempt = ?,"
    f" {_UNCLAIM}, updated = ? {_CLAIMED}",
    S.DEAD: f"UPDATE deliveries SET status = '{S.DEAD}', last_error = ?, {_UNCLAIM},"
    f" updated = ? {_CLAIMED}",
    S.UNDELIVERABLE: f"UPDATE deliveries SET status = '{S.UNDELIVERABLE}', last_error = ?,"
    f" {_UNCLAIM}, updated = ? {_CLAIMED}",
    # rendered in dry-run mode and not sent: counts as sent for the per-account limit
    S.SHADOW: f"UPDATE deliveries SET status = '{S.SHADOW}', last_error = NULL, {_UNCLAIM},"
    f" updated = ? {_CLAIMED}",
    # not attempts: give back the attempt the claim counted
    S.HELD: f"UPDATE deliveries SET status = '{S.HELD}', last_error = ?,"
    f" attempts = {_GIVE_BACK}, {_UNCLAIM}, updated = ? {_CLAIMED}",
    S.DEFERRED: f"UPDATE deliveries SET status = '{S.QUEUED}', last_error = ?, next_attempt = ?,"
    f" attempts = {_GIVE_BACK}, {_UNCLAIM}, updated = ? {_CLAIMED}",
}
# A folded delivery is either still queued or claimed by the owner that sent the notice.
FOLD = (
    f"UPDATE deliveries SET status = '{S.FOLDED}', folded_into = ?, last_error = NULL,"
    f" updated = ?, {_UNCLAIM} WHERE notice_id = ? AND channel = ?"
    f" AND (status = '{S.QUEUED}' OR (status = '{S.SENDING}' AND claimed_by = ?))"
)
# What an owner still holds ({lock}: the dialect's row lock)
HELD_CLAIMS = (
    "SELECT d.notice_id, d.channel FROM deliveries d"
    f" WHERE d.status = '{S.SENDING}' AND d.claimed_by = ?{{lock}}"
)
RENEW = f"UPDATE deliveries SET lease_until = ? WHERE status = '{S.SENDING}' AND claimed_by = ?"
# Claims given back (queued again at once, the claim's attempt not counted): {who} says whose
_RELEASE = (
    f"UPDATE deliveries SET status = '{S.QUEUED}', {_UNCLAIM}, attempts = {_GIVE_BACK},"
    f" next_attempt = ?, updated = ? WHERE status = '{S.SENDING}' AND {{who}}"
)
RELEASE_CLAIMS = _RELEASE.format(who="claimed_by = ?")
# every incarnation of a worker identity: its claims are "identity#incarnation"
TAKE_BACK = _RELEASE.format(who="substr(claimed_by, 1, ?) = ?")
#: processes of one node (one worker identity) at most: "host/0" ... "host/63"
MAX_SLOTS = 64
# the columns of the operator views, in the order of their typed rows
_DELIVERY_KEYS = tuple(DeliveryState.__annotations__)
_LISTED_KEYS = tuple(ListedDelivery.__annotations__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self", bound="SQLStore")


def store_errors(
    method: Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]]:
    """Report every database failure as StoreError, whatever the backend's driver raised."""

    @functools.wraps(method)
    async def wrapper(self: _Self, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(self, *args, **kwargs)
        except self.driver_errors as exc:
            raise StoreError(f"{method.__name__}: {exc}") from exc

    return wrapper


class SQLStore(GroupCommit, Store):
    """The store's logic over a backend's connections and dialect."""

    dialect: ClassVar[Dialect]
    #: what the driver raises for a database failure (reported as StoreError)
    driver_errors: ClassVar[tuple[type[Exception], ...]]

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        #: accounts forgotten through this store object: histories read before are void
        self.forgotten = 0
        super().__init__()
        json_text = self.dialect.json_text
        asn, org = json_text("n.payload", "asn"), json_text("n.payload", "as_org")
        # the provider and the country of a notice as the breaker and the held filters name them
        self._provider = (
            f"CASE WHEN {asn} IS NOT NULL THEN 'AS' || {asn}"
            f" WHEN {org} IS NOT NULL THEN 'org:' || {org} END"
        )
        self._country = json_text("n.payload", "country")

    # -- what a backend supplies -------------------------------------------------------------

    def reading(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for reads (outside any transaction of this store's writes)."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A transaction: committed when the block ends, rolled back when it raises."""
        raise NotImplementedError

    def _quiet(self, exc: BaseException) -> bool:
        return isinstance(exc, (*self.driver_errors, OSError, StoreError))

    async def _migrate(
        self, conn: Connection, apply: Callable[[int, str], Awaitable[None]], where: str
    ) -> None:
        """Apply the migrations newer than the schema (``apply``: one script and its version
        row, in one transaction); the caller holds the backend's migration lock."""
        await conn.execute(self.dialect.schema_version)
        current = await self._schema_at(conn)
        for version, script in migrations(self.dialect.name):
            if version > current:
                log.info("applying schema migration %04d to %s", version, where)
                await apply(version, script)

    async def _check_schema(self, conn: Connection, where: str) -> None:
        """SchemaBehind unless the schema has the newest migration; reads, creates nothing."""
        exists = await conn.fetch(self.dialect.has_schema_version)
        self._require_schema(await self._schema_at(conn) if exists else 0, where)

    def _require_schema(self, found: int, where: str) -> None:
        newest = migrations(self.dialect.name)[-1][0]
        if found < newest:
            raise SchemaBehind(where, found, newest)

    async def _schema_at(self, conn: Connection) -> int:
        ((current,),) = await conn.fetch("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(current)

    async def _fetch_any(
        self, conn: Connection, sql: str, values: Sequence[Any], column: str, *after: Any
    ) -> AsyncIterator[Any]:
        """The rows of ``sql`` (``{values}``: the condition ``column`` is one of ``values``,
        followed by the parameters ``after``)."""
        for condition, params in self.dialect.any_of(column, values):
            for row in await conn.fetch(sql.format(values=condition), *params, *after):
                yield row

    # -- the login path ----------------------------------------------------------------------

    async def _apply_batch(self, batch: list[Op]) -> list[Outcome]:
        async with self.transaction() as tx:
            return await self._write_batch(tx, batch)

    async def _write_batch(self, tx: Connection, batch: list[Op]) -> list[Outcome]:
        # Every account the batch writes is locked first, in a fixed order, so that the
        # decisions see every commit of other writers about these accounts.
        await self.dialect.lock_accounts(
            tx,
            sorted({op.login.account if isinstance(op, RecordOp) else op.account for op in batch}),
        )
        accounts = sorted({op.login.account for op in batch if isinstance(op, RecordOp)})
        histories: dict[str, list[KnownOrigin]] = {account: [] for account in accounts}
        async for row in self._fetch_any(tx, SELECT_HISTORIES, accounts, "account"):
            histories[row[HISTORY_ACCOUNT]].append(known_origin(row))
        settings = {
            row[4]: account_settings(row)
            async for row in self._fetch_any(tx, SELECT_SETTINGS, accounts, "account")
        }
        pending: dict[str, list[PendingNotice]] = {}
        wanted, since = prefetch_pending(batch, histories)
        async for row in self._fetch_any(tx, SELECT_PENDING, wanted, "n.account", since):
            notice = PendingNotice(row[0], row[1], row[2], row[3], _text(row[4]))
            pending.setdefault(notice.account, []).append(notice)
        results, rows = plan_batch(
            batch, histories, pending, settings=settings, keep=self._config.origins_per_provider
        )
        for sql, values in (
            (DELETE_ORIGIN, rows.evictions),
            (UPSERT_ORIGIN, rows.origins),
            (UPSERT_ALERT, rows.alerts),
            (UPSERT_ACCOUNT, rows.accounts),
            (COUNT_FAILURE, rows.failures),
            (INSERT_NOTICE, rows.notices),
            (INSERT_DELIVERY, rows.deliveries),
            (INSERT_DECISION, rows.decisions),
            (UPDATE_PAYLOAD, rows.payloads),
        ):
            if values:
                await tx.executemany(sql, values)
        return results

    # -- the queue ---------------------------------------------------------------------------

    @store_errors
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Delivery]:
        if self.dialect.any_due is not None:
            async with self.reading() as conn:
                if not await conn.fetch(self.dialect.any_due, now, now):
                    return []
        async with self.transaction() as tx:
            due = await self.dialect.claim_due(tx, owner, limit, now, now + lease_s)
            ids = sorted({row[0] for row in due})
            select = "SELECT id, payload FROM notices WHERE {values}"
            payloads = {
                row[0]: _text(row[1]) async for row in self._fetch_any(tx, select, ids, "id")
            }
        return [
            Delivery(
                notice=notice_from_payload(payloads[notice_id]),
                channel=channel,
                attempts=attempts,
                deadline=deadline,
                released=bool(last_error and str(last_error).startswith(RELEASED)),
            )
            for notice_id, channel, attempts, deadline, last_error in due
        ]

    @store_errors
    async def finish(
        self, owner: str, results: Sequence[DeliveryResult], now: float
    ) -> list[DeliveryResult]:
        if not results:
            return []
        for r in results:
            if r.status not in FINISH and r.status != S.FOLDED:
                raise StoreError(f"finish: unknown delivery status {r.status!r}")
        async with self.transaction() as tx:
            held = {
                (row[0], row[1])
                for row in await tx.fetch(HELD_CLAIMS.format(lock=self.dialect.lock_rows), owner)
            }
            # a fold also applies to deliveries still queued, which nobody claimed
            lost = [
                r for r in results if r.status != S.FOLDED and (r.notice_id, r.channel) not in held
            ]
            grouped: dict[DeliveryStatus, list[tuple[Any, ...]]] = {s: [] for s in FINISH}
            folds: list[tuple[Any, ...]] = []
            for r in results:
                if r.status != S.FOLDED and (r.notice_id, r.channel) not in held:
                    continue
                if r.status in (S.SENT, S.SHADOW):
                    grouped[r.status].append((now, r.notice_id, r.channel, owner))
                elif r.status in (S.QUEUED, S.DEFERRED):
                    grouped[r.status].append(
                        (r.error, r.next_attempt, now, r.notice_id, r.channel, owner)
                    )
                elif r.status == S.FOLDED:
                    folds.append((r.folded_into, now, r.notice_id, r.channel, owner))
                else:
                    grouped[r.status].append((r.error, now, r.notice_id, r.channel, owner))
            for status, rows in grouped.items():
                if rows:
                    await tx.executemany(FINISH[status], rows)
            if folds:
                await tx.executemany(FOLD, folds)
        return lost

    @store_errors
    async def renew(self, owner: str, until: float) -> set[tuple[str, str]]:
        async with self.transaction() as tx:
            await tx.execute(RENEW, until, owner)
            rows = await tx.fetch(HELD_CLAIMS.format(lock=""), owner)
        return {(row[0], row[1]) for row in rows}

    @store_errors
    async def release_claims(self, owner: str, now: float) -> int:
        async with self.transaction() as tx:
            return await tx.execute(RELEASE_CLAIMS, now, now, owner)

    @store_errors
    async def take_back(self, identity: str, now: float) -> int:
        prefix = identity + INCARNATION
        async with self.transaction() as tx:
            return await tx.execute(TAKE_BACK, now, now, len(prefix), prefix)

    async def lock_identity(self, base: str) -> str:
        for slot in range(MAX_SLOTS):
            name = f"{base}/{slot}"
            if await self._lock_slot(name, slot):
                return name
        raise StoreError(f"every worker slot of {base!r} is taken ({MAX_SLOTS} processes)")

    async def _lock_slot(self, name: str, slot: int) -> bool:
        """Hold the lock of worker identity ``name`` (slot ``slot`` of its node) until the
        store closes; False when another live process holds it."""
        raise NotImplementedError

    @store_errors
    async def oldest_queued(self) -> float | None:
        async with self.reading() as conn:
            sql = f"SELECT min(created) FROM deliveries WHERE status = '{S.QUEUED}'"
            ((oldest,),) = await conn.fetch(sql)
        return None if oldest is None else float(oldest)

    @store_errors
    async def outbox_counts(self) -> dict[str, int]:
        async with self.reading() as conn:
            rows = await conn.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
        return {str(row[0]): int(row[1]) for row in rows}

    @store_errors
    async def list_deliveries(
        self, status: str | None = None, limit: int = 100
    ) -> list[ListedDelivery]:
        sql = (
            "SELECT d.notice_id, d.channel, d.status, d.attempts, d.next_attempt,"
            f" d.last_error, n.account, n.created, n.reasons FROM {self.dialect.join_notices}"
        )
        params: list[Any] = []
        if status:
            sql += " WHERE d.status = ?"
            params.append(status)
        sql += " ORDER BY n.created DESC LIMIT ?"
        async with self.reading() as conn:
            rows = await conn.fetch(sql, *params, limit)
        return [
            cast(
                ListedDelivery,
                {**dict(zip(_LISTED_KEYS, row, strict=True)), "reasons": json.loads(_text(row[8]))},
            )
            for row in rows
        ]

    # -- recipients and delivery rules -------------------------------------------------------

    @store_errors
    async def contact(self, account: str) -> Contact | None:
        return (await self.contacts([account])).get(account)

    @store_errors
    async def contacts(self, accounts: Collection[str]) -> dict[str, Contact]:
        async with self.reading() as conn:
            rows = self._fetch_any(conn, SELECT_CONTACTS, sorted(set(accounts)), "account")
            return {row[0]: Contact(*row) async for row in rows}

    @store_errors
    async def upsert_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        sql = (
            "INSERT INTO contacts (account, email, phone, language, timezone, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET"
            " email = excluded.email, phone = excluded.phone, language = excluded.language,"
            " timezone = excluded.timezone, updated = excluded.updated"
        )
        rows = [(c.account, c.email, c.phone, c.language, c.timezone, now) for c in contacts]
        if rows:
            async with self.transaction() as tx:
                await tx.executemany(sql, rows)
        return len(rows)

    @store_errors
    async def remove_contact(self, account: str) -> bool:
        async with self.transaction() as tx:
            return await tx.execute("DELETE FROM contacts WHERE account = ?", account) > 0

    async def sent_times(self, account: str, channel: str, since: float) -> list[float]:
        return (await self.sent_times_of([(account, channel)], since)).get((account, channel), [])

    @store_errors
    async def sent_times_of(
        self, pairs: Collection[tuple[str, str]], since: float
    ) -> dict[tuple[str, str], list[float]]:
        wanted = set(pairs)
        found: dict[tuple[str, str], list[float]] = {}
        async with self.reading() as conn:
            accounts = sorted({account for account, _ in wanted})
            async for account, channel, updated in self._fetch_any(
                conn, SELECT_SENT, accounts, "account", since
            ):
                if (account, channel) in wanted:
                    found.setdefault((account, channel), []).append(float(updated))
        return found

    async def waiting_notices(self, account: str, channel: str, until: float) -> list[Notice]:
        waiting = (await self.waiting_notices_of([(account, channel)])).get((account, channel), [])
        return [notice for created, notice in waiting if created <= until]

    @store_errors
    async def waiting_notices_of(
        self, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[float, Notice]]]:
        wanted = set(pairs)
        found: dict[tuple[str, str], list[tuple[float, Notice]]] = {}
        sql = SELECT_WAITING.replace("{join}", self.dialect.join_notices)
        async with self.reading() as conn:
            accounts = sorted({account for account, _ in wanted})
            async for account, channel, created, payload in self._fetch_any(
                conn, sql, accounts, "d.account"
            ):
                if (account, channel) in wanted:
                    notice = notice_from_payload(_text(payload))
                    found.setdefault((account, channel), []).append((float(created), notice))
        return found

    # -- operators ---------------------------------------------------------------------------

    @store_errors
    async def notice_detail(self, notice_id: str) -> tuple[Notice, list[DeliveryState]] | None:
        sql = (
            f"SELECT {', '.join(_DELIVERY_KEYS)} FROM deliveries WHERE notice_id = ?"
            " ORDER BY channel"
        )
        async with self.reading() as conn:
            found = await conn.fetch("SELECT payload FROM notices WHERE id = ?", notice_id)
            if not found:
                return None
            rows = await conn.fetch(sql, notice_id)
        deliveries = [
            cast(DeliveryState, dict(zip(_DELIVERY_KEYS, row, strict=True))) for row in rows
        ]
        return notice_from_payload(_text(found[0][0])), deliveries

    @store_errors
    async def retry(self, notice_id: str, now: float, deadline: float) -> int:
        sql = (
            f"UPDATE deliveries SET status = '{S.QUEUED}', next_attempt = ?,"
            f" deadline = {_larger('deadline', '?')}, updated = ?"
            f" WHERE notice_id = ? AND status IN {_in(S.DEAD, S.UNDELIVERABLE)}"
        )
        async with self.transaction() as tx:
            return await tx.execute(sql, now, deadline, deadline, now, notice_id)

    @store_errors
    async def purge(self, before: float) -> int:
        sql = (
            "DELETE FROM notices WHERE created < ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.account = notices.account AND d.notice_id = notices.id"
            f" AND d.status IN {_in(S.QUEUED, S.SENDING, S.HELD)})"
        )
        async with self.transaction() as tx:
            return await tx.execute(sql, before)

    # -- controls, breaker and held notices --------------------------------------------------

    @store_errors
    async def control(self, name: str) -> dict[str, Any] | None:
        async with self.reading() as conn:
            rows = await conn.fetch("SELECT value FROM controls WHERE name = ?", name)
        return dict(json.loads(_text(rows[0][0]))) if rows else None

    @store_errors
    async def set_control(
        self, name: str, value: dict[str, Any], now: float, unless: tuple[str, Any] | None = None
    ) -> bool:
        sql = (
            "INSERT INTO controls (name, value, updated) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated"
        )
        params: list[Any] = [name, json.dumps(value, ensure_ascii=False), now]
        if unless is not None:
            # compare and set: several processes may race to change the same switch
            condition, more = self.dialect.differs(*unless)
            sql += f" WHERE {condition}"
            params += more
        async with self.transaction() as tx:
            return await tx.execute(sql, *params) > 0

    @store_errors
    async def notice_rates(self, now: float, window_s: float, baseline_s: float) -> NoticeRates:
        since = now - window_s
        dialect = self.dialect
        async with self.reading() as conn:

            async def scalar(sql: str, *params: Any) -> Any:
                ((value,),) = await conn.fetch(sql, *params)
                return value

            window = await scalar("SELECT count(*) FROM notices WHERE created >= ?", since)
            baseline = await scalar(
                "SELECT count(*) FROM notices WHERE created >= ? AND created < ?",
                now - baseline_s,
                since,
            )
            first = await scalar(
                "SELECT min(created) FROM notices WHERE created >= ?", now - baseline_s
            )
            sql = (
                f"SELECT r.value, count(*) FROM notices n {dialect.reason_rows}"
                " WHERE n.created >= ? GROUP BY r.value"
            )
            by_reason = {str(row[0]): int(row[1]) for row in await conn.fetch(sql, since)}

            async def top(expr: str, reason: str) -> tuple[str | None, int]:
                sql = (
                    f"SELECT k, c FROM (SELECT {expr} AS k, count(DISTINCT n.account) AS c"
                    f" FROM notices n WHERE n.created >= ? AND {dialect.has_reason}"
                    " GROUP BY 1) AS s WHERE k IS NOT NULL ORDER BY c DESC, k LIMIT 1"
                )
                rows = await conn.fetch(sql, since, reason)
                return (str(rows[0][0]), int(rows[0][1])) if rows else (None, 0)

            provider, provider_accounts = await top(self._provider, "new_provider")
            country, country_accounts = await top(self._country, "new_country")
        # the baseline covers the time notices have been recorded, at most baseline_s
        span = max(0.0, since - max(now - baseline_s, first if first is not None else since))
        return NoticeRates(
            window=int(window or 0),
            baseline=int(baseline or 0),
            baseline_span_s=span,
            by_reason=by_reason,
            top_provider=provider,
            top_provider_accounts=provider_accounts,
            top_country=country,
            top_country_accounts=country_accounts,
        )

    @store_errors
    async def hold_queued(
        self, since: float, channels: Sequence[str], reason: str, now: float
    ) -> int:
        if not channels:
            return 0
        held = 0
        async with self.transaction() as tx:
            for condition, params in self.dialect.any_of("channel", channels):
                sql = (
                    f"UPDATE deliveries SET status = '{S.HELD}', last_error = ?, updated = ?"
                    f" WHERE {condition} AND status = '{S.QUEUED}' AND created >= ?"
                )
                held += await tx.execute(sql, reason, now, *params, since)
        return held

    def _held(self, filters: HeldFilter) -> tuple[str, list[Any]]:
        """Conditions (on deliveries d joined to notices n) for held deliveries."""
        sql = f"d.status = '{S.HELD}'"
        params: list[Any] = []
        for value, condition in (
            (filters.reason, self.dialect.has_reason),
            (filters.provider, f"{self._provider} = ?"),
            (filters.country.upper(), f"{self._country} = ?"),
            (filters.account, "d.account = ?"),
        ):
            if value:
                sql += f" AND {condition}"
                params.append(value)
        return sql, params

    @store_errors
    async def held_summary(self, filters: HeldFilter) -> dict[str, dict[str, int]]:
        where, params = self._held(filters)
        summary: dict[str, dict[str, int]] = {}
        async with self.reading() as conn:
            for name, expr, source in (
                ("reason", "r.value", f"{self.dialect.join_notices} {self.dialect.reason_rows}"),
                ("provider", self._provider, self.dialect.join_notices),
                ("country", self._country, self.dialect.join_notices),
                ("channel", "d.channel", self.dialect.join_notices),
            ):
                sql = (
                    f"SELECT coalesce({expr}, 'unknown'), count(*) FROM {source}"
                    f" WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1"
                )
                rows = await conn.fetch(sql, *params)
                summary[name] = {str(row[0]): int(row[1]) for row in rows}
        return summary

    @store_errors
    async def release_held(
        self, filters: HeldFilter, now: float, per_second: float, note: str = RELEASED
    ) -> int:
        where, params = self._held(filters)
        select = (
            "SELECT d.account, d.notice_id, d.channel"
            f" FROM {self.dialect.join_notices} WHERE {where}"
            f" ORDER BY n.created, d.notice_id, d.channel{self.dialect.lock_rows}"
        )
        # released notices go out at a bounded rate, oldest first, not as one burst
        update = (
            f"UPDATE deliveries SET status = '{S.QUEUED}', next_attempt = ?,"
            f" deadline = {_larger('deadline', '?')}, last_error = ?, updated = ?"
            f" WHERE account = ? AND notice_id = ? AND channel = ? AND status = '{S.HELD}'"
        )
        async with self.transaction() as tx:
            found = await tx.fetch(select, *params)
            rows = []
            for i, (account, notice_id, channel) in enumerate(found):
                at = now + i / per_second
                rows.append(
                    (at, at + 86400.0, at + 86400.0, note, now, account, notice_id, channel)
                )
            if rows:
                await tx.executemany(update, rows)
        # the rows were read in this transaction, locked: each of them changed
        return len(rows)

    @store_errors
    async def discard_held(self, filters: HeldFilter, note: str, now: float) -> int:
        where, params = self._held(filters)
        sql = (
            f"UPDATE deliveries SET status = '{S.DISCARDED}', last_error = ?, updated = ?"
            " WHERE (account, notice_id, channel) IN (SELECT d.account, d.notice_id, d.channel"
            f" FROM {self.dialect.join_notices} WHERE {where})"
        )
        async with self.transaction() as tx:
            return await tx.execute(sql, note, now, *params)

    @store_errors
    async def sample_origins(self, limit: int) -> list[tuple[str, str | None, str | None]]:
        sql = "SELECT prefix, country, provider FROM origins ORDER BY random() LIMIT ?"
        async with self.reading() as conn:
            rows = await conn.fetch(sql, limit)
        return [(str(r[0]), r[1] or None, r[2] or None) for r in rows]

    # -- blocks ------------------------------------------------------------------------------

    @store_errors
    async def add_block(self, block: Block, now: float) -> Block:
        target = block.target
        key = (block.account, target.kind.value, target.key, target.country)
        async with self.transaction() as tx:
            await tx.execute(
                UPSERT_BLOCK,
                *key,
                block.created,
                block.until,
                block.source.value,
                block.notice_id,
                now,
            )
            await tx.execute(BUMP_BLOCKS)
            rows = await tx.fetch(SELECT_BLOCK, *key)
        return _block(rows[0])

    @store_errors
    async def list_blocks(self, now: float, account: str | None = None) -> list[Block]:
        sql = f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE until > ?"
        params: list[Any] = [now]
        if account is not None:
            sql += " AND account = ?"
            params.append(account)
        sql += " ORDER BY account, created, kind, key, country"
        async with self.reading() as conn:
            rows = await conn.fetch(sql, *params)
        return [_block(row) for row in rows]

    @store_errors
    async def clear_blocks(self, account: str, targets: Sequence[BlockTarget] | None = None) -> int:
        cleared = 0
        async with self.transaction() as tx:
            if targets is None:
                cleared = await tx.execute("DELETE FROM blocks WHERE account = ?", account)
            else:
                sql = (
                    "DELETE FROM blocks WHERE account = ? AND kind = ? AND key = ? AND country = ?"
                )
                for target in dict.fromkeys(targets):
                    cleared += await tx.execute(
                        sql, account, target.kind.value, target.key, target.country
                    )
            if cleared:
                await tx.execute(BUMP_BLOCKS)
        return cleared

    @store_errors
    async def active_blocks(self, now: float, since_version: int) -> ActiveBlocks | None:
        async with self.reading() as conn:
            # the version first: rows read after it are at least as new as it says
            ((version,),) = await conn.fetch(BLOCKS_VERSION)
            if int(version) == since_version:
                return None
            rows = await conn.fetch(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE until > ?", now)
        return ActiveBlocks(int(version), tuple(_block(row) for row in rows))

    # -- owners' answers ---------------------------------------------------------------------

    @store_errors
    async def record_answer(self, feedback: Feedback) -> Feedback:
        async with self.transaction() as tx:
            await tx.execute(
                UPSERT_FEEDBACK,
                feedback.notice_id,
                feedback.account,
                feedback.answer.value,
                feedback.at,
                feedback.prefix,
                feedback.country,
                feedback.provider,
            )
            rows = await tx.fetch(SELECT_FEEDBACK, feedback.notice_id)
            stored = _feedback(rows[0])
            await tx.execute(
                CONFIRM_ORIGIN,
                stored.at if stored.answer is Answer.CONFIRMED else None,
                stored.account,
                stored.prefix,
                stored.country,
                stored.provider,
            )
        return stored

    @store_errors
    async def answer_to(self, notice_id: str) -> Feedback | None:
        async with self.reading() as conn:
            rows = await conn.fetch(SELECT_FEEDBACK, notice_id)
        return _feedback(rows[0]) if rows else None

    # -- an account's settings ---------------------------------------------------------------

    @store_errors
    async def settings(self, account: str) -> AccountSettings:
        async with self.reading() as conn:
            found = [
                account_settings(row)
                async for row in self._fetch_any(conn, SELECT_SETTINGS, [account], "account")
            ]
        return found[0] if found else NO_SETTINGS

    @store_errors
    async def save_settings(
        self, account: str, settings: AccountSettings, now: float
    ) -> AccountSettings:
        async with self.transaction() as tx:
            await tx.execute(
                UPSERT_SETTINGS,
                account,
                settings.notices,
                settings.trip_country,
                settings.trip_until,
                now,
            )
            found = [
                account_settings(row)
                async for row in self._fetch_any(tx, SELECT_SETTINGS, [account], "account")
            ]
        return found[0]

    # -- privacy and history -----------------------------------------------------------------

    @store_errors
    async def account_record(self, account: str, decisions: int = 50) -> AccountRecord | None:
        contact = await self.contact(account)
        async with self.reading() as conn:
            found = await conn.fetch_dicts(
                "SELECT account, first_seen, last_seen, logins, failures, last_failure"
                " FROM accounts WHERE account = ?",
                account,
            )
            blocks = await conn.fetch(
                f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE account = ? ORDER BY created",
                account,
            )
            answers = [
                _feedback(row)
                for row in await conn.fetch(
                    f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE account = ? ORDER BY at",
                    account,
                )
            ]
            chosen = [
                account_settings(row)
                async for row in self._fetch_any(conn, SELECT_SETTINGS, [account], "account")
            ]
            if not found and contact is None and not blocks and not answers and not chosen:
                return None
            origins = await conn.fetch_dicts(
                f"SELECT {_ORIGIN_COLUMNS} FROM origins WHERE account = ? ORDER BY last_seen DESC",
                account,
            )
            recent = await conn.fetch_dicts(
                "SELECT at, protocol, prefix, country, provider, network, reasons, notified, note,"
                " notice_id FROM decisions WHERE account = ?"
                f" ORDER BY at DESC, {self.dialect.decision_order} DESC LIMIT ?",
                account,
                decisions,
            )
            notices = await conn.fetch(
                "SELECT payload FROM notices WHERE account = ? ORDER BY created DESC", account
            )
        for row in origins:
            # ``confirmed``: when the owner said "It was me" about it (None: never, or denied)
            row["clients"] = json.loads(row["clients"]) if row["clients"] else []
            row["country"] = row["country"] or None
            row["provider"] = row["provider"] or None
        for row in recent:
            row["reasons"] = json.loads(_text(row["reasons"]))
            row["notified"] = bool(row["notified"])
        return {
            "account": found[0] if found else {"account": account},
            "contact": None
            if contact is None
            else {
                "email": contact.email,
                "phone": contact.phone,
                "language": contact.language,
                "timezone": contact.timezone,
            },
            "origins": origins,
            "decisions": recent,
            "notices": [json.loads(_text(row[0])) for row in notices],
            "blocks": [_block(row).as_dict() for row in blocks],
            "feedback": [answer.as_dict() for answer in answers],
            "settings": (chosen[0] if chosen else NO_SETTINGS).as_dict(),
        }

    @store_errors
    async def forget(self, account: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        async with self.transaction() as tx:
            # the lock a login batch takes: no login of the account commits half-forgotten
            await self.dialect.lock_accounts(tx, [account])
            for table in (
                "origins",
                "decisions",
                "notices",
                "contacts",
                "blocks",
                "feedback",
                "account_settings",
                "accounts",
            ):
                # deliveries go with their notices (ON DELETE CASCADE)
                counts[table] = await tx.execute(f"DELETE FROM {table} WHERE account = ?", account)
            # in any case: every process reads the version once a second, and a change also
            # empties its cache of histories (service/history_cache.py)
            await tx.execute(BUMP_BLOCKS)
        self.forgotten += 1
        return counts

    @store_errors
    async def housekeeping(
        self, now: float, address_retention_s: float, purge_origins_after_s: float
    ) -> dict[str, int]:
        async with self.transaction() as tx:
            cut = await tx.execute(self.dialect.scrub_addresses, now - address_retention_s)
        # The purge reads every origin; in one transaction it held SQLite's write lock for
        # seconds with a million accounts (each login that writes waiting, hourly). It goes a
        # range of accounts at a time instead, each range its own short transaction.
        purged, after = 0, ""
        while True:
            async with self.reading() as conn:
                found = await conn.fetch(PURGE_RANGE_END, after, PURGE_CHUNK_ROWS - 1)
            upto = found[0][0] if found else None
            async with self.transaction() as tx:
                if upto is None:
                    purged += await tx.execute(PURGE_REST, after, purge_origins_after_s)
                    return {"addresses_cut": cut, "origins_purged": purged}
                purged += await tx.execute(PURGE_RANGE, after, upto, purge_origins_after_s)
            after = upto
