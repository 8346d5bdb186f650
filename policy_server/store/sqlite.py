"""The embedded store: one SQLite file in WAL mode through aiosqlite.

Two connections: readers use one (WAL lets them run beside a writer); every write goes through
the other, owned by one writer task. Concurrent logins are committed together (group commit):
the writer takes every operation waiting in its queue, waits at most ``group_commit_wait_ms``
for more, and applies them in one transaction with a handful of statements, so durability costs
one commit per batch rather than one per login.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import aiosqlite

from ..config import StorageConfig
from ..model import History, KnownOrigin, Notice
from .base import (
    Contact,
    Delivery,
    DeliveryResult,
    HeldFilter,
    NoticeRates,
    Outcome,
    Store,
    StoreError,
    SuccessfulLogin,
)
from .batch import (
    RELEASED,
    GroupCommit,
    Op,
    RecordOp,
    plan_batch,
)
from .batch import known_origin as _known
from .batch import notice_from_payload as _notice_from_payload

log = logging.getLogger("policy_server.store")

# SQLite's limit on bound parameters is 32766 in current builds; stay far below it.
_IN_CHUNK = 500


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("policy_server.store").joinpath("migrations", "sqlite")
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


_SELECT_ORIGINS = (
    "SELECT prefix, country, provider, as_org, first_seen, last_seen, count"
    " FROM origins WHERE account = ?"
)
_UPSERT_ORIGIN = (
    "INSERT INTO origins (account, prefix, country, provider, as_org, first_seen, last_seen,"
    " count) VALUES (?, ?, ?, ?, ?, ?, ?, 1)"
    " ON CONFLICT (account, prefix, country, provider) DO UPDATE SET"
    " last_seen = max(last_seen, excluded.last_seen), count = count + 1,"
    " as_org = coalesce(excluded.as_org, as_org)"
)
_UPSERT_ACCOUNT = (
    "INSERT INTO accounts (account, first_seen, last_seen, logins) VALUES (?, ?, ?, 1)"
    " ON CONFLICT (account) DO UPDATE SET"
    " last_seen = max(last_seen, excluded.last_seen), logins = logins + 1"
)
_INSERT_DECISION = (
    "INSERT INTO decisions (account, at, protocol, prefix, country, provider, network, reasons,"
    " notified, note, notice_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNT_FAILURE = "UPDATE accounts SET failures = failures + 1, last_failure = ? WHERE account = ?"
_INSERT_NOTICE = (
    "INSERT INTO notices (id, account, created, reasons, payload, origin_key)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (notice_id, channel, account, status, next_attempt, deadline,"
    " created, updated) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)"
)
# The newest notice about this origin that some channel has not delivered yet.
_PENDING_NOTICE = (
    "SELECT n.id, n.payload FROM notices n"
    " WHERE n.account = ? AND n.origin_key = ? AND n.created >= ?"
    " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.notice_id = n.id"
    "  AND d.status IN ('queued', 'sending'))"
    " ORDER BY n.created DESC LIMIT 1"
)
# A claim is two indexed steps in one transaction: find the due keys, then take each by its
# primary key (an UPDATE ... WHERE (a, b) IN (subquery) would scan the whole table).
_DUE = (
    "SELECT notice_id, channel, attempts, deadline, last_error FROM deliveries"
    " WHERE status = 'queued' AND next_attempt <= ?"
    " UNION ALL"
    " SELECT notice_id, channel, attempts, deadline, last_error FROM deliveries"
    " WHERE status = 'sending' AND lease_until <= ?"
    " LIMIT ?"
)
_CLAIM = (
    "UPDATE deliveries SET status = 'sending', claimed_by = ?, lease_until = ?,"
    " attempts = attempts + 1, updated = ? WHERE notice_id = ? AND channel = ?"
)
_ANY_DUE = (
    "SELECT 1 FROM deliveries WHERE status = 'queued' AND next_attempt <= ?"
    " UNION ALL SELECT 1 FROM deliveries WHERE status = 'sending' AND lease_until <= ? LIMIT 1"
)
_FINISH = {
    "sent": (
        "UPDATE deliveries SET status = 'sent', last_error = NULL, claimed_by = NULL,"
        " lease_until = NULL, updated = ? WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
    "queued": (
        "UPDATE deliveries SET status = 'queued', last_error = ?, next_attempt = ?,"
        " claimed_by = NULL, lease_until = NULL, updated = ?"
        " WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
    "dead": (
        "UPDATE deliveries SET status = 'dead', last_error = ?, claimed_by = NULL,"
        " lease_until = NULL, updated = ? WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
    "undeliverable": (
        "UPDATE deliveries SET status = 'undeliverable', last_error = ?, claimed_by = NULL,"
        " lease_until = NULL, updated = ? WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
    # rendered in dry-run mode and not sent: counts as sent for the per-account limit
    "shadow": (
        "UPDATE deliveries SET status = 'shadow', last_error = NULL, claimed_by = NULL,"
        " lease_until = NULL, updated = ? WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
    # not attempts: give back the attempt the claim counted
    "held": (
        "UPDATE deliveries SET status = 'held', last_error = ?, attempts = max(attempts - 1, 0),"
        " claimed_by = NULL, lease_until = NULL, updated = ?"
        " WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
    "deferred": (
        "UPDATE deliveries SET status = 'queued', last_error = ?, next_attempt = ?,"
        " attempts = max(attempts - 1, 0), claimed_by = NULL, lease_until = NULL, updated = ?"
        " WHERE notice_id = ? AND channel = ? AND claimed_by = ?"
    ),
}
# A folded delivery is either still queued or claimed by the owner that sent the notice.
_FOLD = (
    "UPDATE deliveries SET status = 'folded', folded_into = ?, last_error = NULL, updated = ?,"
    " claimed_by = NULL, lease_until = NULL WHERE notice_id = ? AND channel = ?"
    " AND (status = 'queued' OR (status = 'sending' AND claimed_by = ?))"
)


# The provider of a notice as the breaker and the held filters name it.
_NOTICE_PROVIDER = (
    "CASE WHEN json_extract(n.payload, '$.asn') IS NOT NULL"
    " THEN 'AS' || json_extract(n.payload, '$.asn')"
    " WHEN json_extract(n.payload, '$.as_org') IS NOT NULL"
    " THEN 'org:' || json_extract(n.payload, '$.as_org') END"
)
_NOTICE_COUNTRY = "json_extract(n.payload, '$.country')"


def _held_filter(filters: HeldFilter) -> tuple[str, list[Any]]:
    """SQL conditions (on deliveries d joined to notices n) for held deliveries."""
    sql = "d.status = 'held'"
    params: list[Any] = []
    if filters.reason:
        sql += " AND EXISTS (SELECT 1 FROM json_each(n.reasons) WHERE value = ?)"
        params.append(filters.reason)
    if filters.provider:
        sql += f" AND {_NOTICE_PROVIDER} = ?"
        params.append(filters.provider)
    if filters.country:
        sql += f" AND {_NOTICE_COUNTRY} = ?"
        params.append(filters.country.upper())
    if filters.account:
        sql += " AND d.account = ?"
        params.append(filters.account)
    return sql, params


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_errors(
    method: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Report every database failure as StoreError, whatever the driver raised."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (sqlite3.Error, ValueError) as exc:
            # aiosqlite raises ValueError for a closed connection
            raise StoreError(f"{method.__name__}: {exc}") from exc

    return wrapper


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SQLiteStore(GroupCommit, Store):
    """SQLite through aiosqlite, WAL journal, group commit through one writer task."""

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._path = Path(config.path)
        self._reader: aiosqlite.Connection | None = None
        # The request path's one read (an account's origins) runs on the event loop: an indexed
        # point read from the page cache costs a few microseconds, far less than handing it to
        # a thread and back. WAL readers never wait for the writer.
        self._point: sqlite3.Connection | None = None
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._queue: asyncio.Queue[Op] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        #: login transactions committed, and logins they carried (group-commit efficiency)
        self.commits = 0
        self.committed_ops = 0

    # -- connection life -------------------------------------------------------------------

    async def _connect(self, *, read_only: bool) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(str(self._path), isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(self._config.busy_timeout_ms)}")
        if read_only:
            await conn.execute("PRAGMA query_only = ON")
        else:
            await conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode survives a killed process; only an OS crash may lose the
            # last commits, which is what "synchronous = full" is for.
            await conn.execute(f"PRAGMA synchronous = {self._config.synchronous.upper()}")
            await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect(read_only=False)
            await self._migrate(self._writer)
            self._reader = await self._connect(read_only=True)
            self._point = sqlite3.connect(str(self._path), isolation_level=None)
            # waiting on the loop must stay short; WAL makes waiting rare for a reader anyway
            self._point.execute("PRAGMA busy_timeout = 50")
            self._point.execute("PRAGMA query_only = ON")
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite store {self._path}: {exc}") from exc
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        if self._writer_task is not None:
            # Let queued logins commit before the connection goes away.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=5)
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.close()
        if self._point is not None:
            with contextlib.suppress(sqlite3.Error):
                self._point.close()
        self._reader = self._writer = self._point = None
        self._fail_queued()

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        # Processes starting together (serve --workers N) must not migrate at the same time:
        # the version check and the scripts run under a lock file beside the database.
        lock = await asyncio.to_thread(_lock_file, self._path.with_name(self._path.name + ".lock"))
        try:
            await self._migrate_locked(conn)
        finally:
            lock.close()

    async def _migrate_locked(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)"
        )
        async with conn.execute("SELECT max(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = row[0] if row and row[0] is not None else 0
        for version, script in _migrations():
            if version <= current:
                continue
            log.info("applying schema migration %04d to %s", version, self._path)
            # executescript commits on its own, so the version row goes in the same script.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n"
                f"INSERT INTO schema_version VALUES ({version}, {time.time()!r});\nCOMMIT;"
            )

    def _conn(self, conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreError("store is not open")
        return conn

    # -- reads -----------------------------------------------------------------------------

    @_store_errors
    async def history(self, account: str) -> History:
        return self.history_now(account)

    def history_now(self, account: str) -> History:
        if self._point is None:
            raise StoreError("store is not open")
        try:
            rows = self._point.execute(_SELECT_ORIGINS, (account,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"history: {exc}") from exc
        return History(account, tuple(_known(r) for r in rows))

    @_store_errors
    async def release_claims(self, owner: str, now: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'queued', claimed_by = NULL, lease_until = NULL,"
            " attempts = max(attempts - 1, 0), next_attempt = ?, updated = ?"
            " WHERE status = 'sending' AND claimed_by = ?"
        )
        return await self._write([(sql, [(now, now, owner)])])

    @_store_errors
    async def oldest_queued(self) -> float | None:
        sql = "SELECT min(created) FROM deliveries WHERE status = 'queued'"
        async with self._conn(self._reader).execute(sql) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @_store_errors
    async def outbox_counts(self) -> dict[str, int]:
        conn = self._conn(self._reader)
        async with conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status") as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    @_store_errors
    async def list_deliveries(
        self, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        conn = self._conn(self._reader)
        sql = (
            "SELECT d.notice_id, d.channel, d.status, d.attempts, d.next_attempt,"
            " d.last_error, n.account, n.created, n.reasons"
            " FROM deliveries d JOIN notices n ON n.id = d.notice_id"
        )
        params: tuple[Any, ...] = ()
        if status:
            sql += " WHERE d.status = ?"
            params = (status,)
        sql += " ORDER BY n.created DESC LIMIT ?"
        async with conn.execute(sql, (*params, limit)) as cur:
            rows = await cur.fetchall()
        keys = (
            "id",
            "channel",
            "status",
            "attempts",
            "next_attempt",
            "last_error",
            "account",
            "created",
            "reasons",
        )
        return [
            {**dict(zip(keys, row, strict=True)), "reasons": json.loads(row[8])} for row in rows
        ]

    _quiet_errors = (sqlite3.Error, StoreError, OSError, ValueError)

    async def _apply_batch(self, batch: list[Op]) -> list[Outcome]:
        async with self._write_lock:
            return await self._apply(batch)

    async def _load_histories(
        self, conn: aiosqlite.Connection, accounts: Sequence[str]
    ) -> dict[str, list[KnownOrigin]]:
        found: dict[str, list[KnownOrigin]] = {account: [] for account in accounts}
        for chunk in _chunks(accounts):
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT account, prefix, country, provider, as_org, first_seen, last_seen, count"
                f" FROM origins WHERE account IN ({marks})"
            )
            async with conn.execute(sql, tuple(chunk)) as cur:
                for row in await cur.fetchall():
                    found[row[0]].append(_known(row[1:]))
        return found

    async def _apply(self, batch: list[Op]) -> list[Outcome]:
        conn = self._conn(self._writer)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            results = await self._apply_in_transaction(conn, batch)
            await conn.execute("COMMIT")
            self.commits += 1
            self.committed_ops += len(batch)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
        return results

    async def _apply_in_transaction(
        self, conn: aiosqlite.Connection, batch: list[Op]
    ) -> list[Outcome]:
        accounts = sorted({op.login.account for op in batch if isinstance(op, RecordOp)})
        histories = await self._load_histories(conn, accounts)
        results, rows = await plan_batch(
            batch,
            histories,
            lambda login, key, since: self._join_pending(conn, login, key, since),
        )
        for sql, values in (
            (_UPSERT_ORIGIN, rows.origins),
            (_UPSERT_ACCOUNT, rows.accounts),
            (_COUNT_FAILURE, rows.failures),
            (_INSERT_NOTICE, rows.notices),
            (_INSERT_DELIVERY, rows.deliveries),
            (_INSERT_DECISION, rows.decisions),
        ):
            if values:
                await conn.executemany(sql, values)
        return results

    async def _join_pending(
        self, conn: aiosqlite.Connection, login: SuccessfulLogin, key: str, since: float
    ) -> None:
        """Name this login's service in the pending notice about the same origin, if any."""
        async with conn.execute(_PENDING_NOTICE, (login.account, key, since)) as cur:
            row = await cur.fetchone()
        if row is None:
            return
        data = json.loads(row[1])
        protocols = list(data.get("protocols") or [data["protocol"]])
        if login.protocol and login.protocol not in protocols:
            data["protocols"] = [*protocols, login.protocol]
            await conn.execute(
                "UPDATE notices SET payload = ? WHERE id = ?",
                (json.dumps(data, ensure_ascii=False, separators=(",", ":")), row[0]),
            )

    # -- the queue -------------------------------------------------------------------------

    @_store_errors
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Delivery]:
        # An idle queue is the common case: look with a read before taking the write lock, so
        # polling never competes with the logins' commits.
        async with self._conn(self._reader).execute(_ANY_DUE, (now, now)) as cur:
            if await cur.fetchone() is None:
                return []
        conn = self._conn(self._writer)
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                async with conn.execute(_DUE, (now, now, limit)) as cur:
                    due = await cur.fetchall()
                await conn.executemany(
                    _CLAIM, [(owner, now + lease_s, now, row[0], row[1]) for row in due]
                )
                claimed = [(row[0], row[1], row[2] + 1, row[3], row[4]) for row in due]
                payloads: dict[str, str] = {}
                ids = sorted({row[0] for row in claimed})
                for chunk in _chunks(ids):
                    marks = ",".join("?" * len(chunk))
                    async with conn.execute(
                        f"SELECT id, payload FROM notices WHERE id IN ({marks})", tuple(chunk)
                    ) as cur:
                        payloads.update({row[0]: row[1] for row in await cur.fetchall()})
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        return [
            Delivery(
                notice=_notice_from_payload(payloads[row[0]]),
                channel=row[1],
                attempts=row[2],
                deadline=row[3],
                released=bool(row[4] and str(row[4]).startswith(RELEASED)),
            )
            for row in claimed
        ]

    @_store_errors
    async def finish(self, owner: str, results: Sequence[DeliveryResult], now: float) -> None:
        if not results:
            return
        conn = self._conn(self._writer)
        grouped: dict[str, list[tuple[Any, ...]]] = {status: [] for status in _FINISH}
        folds: list[tuple[Any, ...]] = []
        for r in results:
            if r.status in ("sent", "shadow"):
                grouped[r.status].append((now, r.notice_id, r.channel, owner))
            elif r.status in ("queued", "deferred"):
                grouped[r.status].append(
                    (r.error, r.next_attempt, now, r.notice_id, r.channel, owner)
                )
            elif r.status in ("dead", "undeliverable", "held"):
                grouped[r.status].append((r.error, now, r.notice_id, r.channel, owner))
            elif r.status == "folded":
                folds.append((r.folded_into, now, r.notice_id, r.channel, owner))
            else:
                raise ValueError(f"unknown delivery status {r.status!r}")
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for status, rows in grouped.items():
                    if rows:
                        await conn.executemany(_FINISH[status], rows)
                if folds:
                    await conn.executemany(_FOLD, folds)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise

    # -- recipients ------------------------------------------------------------------------

    @_store_errors
    async def contact(self, account: str) -> Contact | None:
        sql = "SELECT email, phone, language, timezone FROM contacts WHERE account = ?"
        async with self._conn(self._reader).execute(sql, (account,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return Contact(account, row[0], row[1], row[2], row[3])

    async def _write(self, sql_rows: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> int:
        """Run statements in one transaction on the write connection; total rows changed."""
        conn = self._conn(self._writer)
        changed = 0
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in sql_rows:
                    for row in rows:
                        async with conn.execute(sql, row) as cur:
                            changed += max(cur.rowcount, 0)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        return changed

    @_store_errors
    async def upsert_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        sql = (
            "INSERT INTO contacts (account, email, phone, language, timezone, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET"
            " email = excluded.email, phone = excluded.phone, language = excluded.language,"
            " timezone = excluded.timezone, updated = excluded.updated"
        )
        rows = [(c.account, c.email, c.phone, c.language, c.timezone, now) for c in contacts]
        return await self._write([(sql, rows)])

    @_store_errors
    async def remove_contact(self, account: str) -> bool:
        return await self._write([("DELETE FROM contacts WHERE account = ?", [(account,)])]) > 0

    # -- delivery rules --------------------------------------------------------------------

    @_store_errors
    async def sent_times(self, account: str, channel: str, since: float) -> list[float]:
        sql = (
            "SELECT updated FROM deliveries WHERE account = ? AND channel = ?"
            " AND status IN ('sent', 'shadow') AND updated >= ? ORDER BY updated"
        )
        async with self._conn(self._reader).execute(sql, (account, channel, since)) as cur:
            return [row[0] for row in await cur.fetchall()]

    @_store_errors
    async def waiting_notices(self, account: str, channel: str, until: float) -> list[Notice]:
        sql = (
            "SELECT n.payload FROM deliveries d JOIN notices n ON n.id = d.notice_id"
            " WHERE d.account = ? AND d.channel = ? AND d.status = 'queued' AND n.created <= ?"
            " ORDER BY n.created"
        )
        async with self._conn(self._reader).execute(sql, (account, channel, until)) as cur:
            return [_notice_from_payload(row[0]) for row in await cur.fetchall()]

    # -- operators -------------------------------------------------------------------------

    @_store_errors
    async def notice_detail(self, notice_id: str) -> tuple[Notice, list[dict[str, Any]]] | None:
        reader = self._conn(self._reader)
        async with reader.execute("SELECT payload FROM notices WHERE id = ?", (notice_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        sql = (
            "SELECT channel, status, attempts, next_attempt, deadline, last_error, folded_into,"
            " updated FROM deliveries WHERE notice_id = ? ORDER BY channel"
        )
        keys = (
            "channel",
            "status",
            "attempts",
            "next_attempt",
            "deadline",
            "last_error",
            "folded_into",
            "updated",
        )
        async with reader.execute(sql, (notice_id,)) as cur:
            deliveries = [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]
        return _notice_from_payload(row[0]), deliveries

    @_store_errors
    async def retry(self, notice_id: str, now: float, deadline: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'queued', next_attempt = ?,"
            " deadline = max(deadline, ?), updated = ?"
            " WHERE notice_id = ? AND status IN ('dead', 'undeliverable')"
        )
        return await self._write([(sql, [(now, deadline, now, notice_id)])])

    @_store_errors
    async def purge(self, before: float) -> int:
        sql = (
            "DELETE FROM notices WHERE created < ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.notice_id = notices.id AND d.status IN ('queued', 'sending', 'held'))"
        )
        return await self._write([(sql, [(before,)])])

    # -- controls, breaker and held notices -------------------------------------------------

    @_store_errors
    async def control(self, name: str) -> dict[str, Any] | None:
        sql = "SELECT value FROM controls WHERE name = ?"
        async with self._conn(self._reader).execute(sql, (name,)) as cur:
            row = await cur.fetchone()
        return None if row is None else dict(json.loads(row[0]))

    @_store_errors
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
            sql += " WHERE json_extract(controls.value, '$.' || ?) IS NOT ?"
            params.extend(unless)
        return await self._write([(sql, [tuple(params)])]) > 0

    @_store_errors
    async def notice_rates(self, now: float, window_s: float, baseline_s: float) -> NoticeRates:
        reader = self._conn(self._reader)
        since = now - window_s

        async def scalar(sql: str, *params: Any) -> Any:
            async with reader.execute(sql, params) as cur:
                row = await cur.fetchone()
            return row[0] if row else None

        window = await scalar("SELECT count(*) FROM notices WHERE created >= ?", since)
        baseline = await scalar(
            "SELECT count(*) FROM notices WHERE created >= ? AND created < ?",
            now - baseline_s,
            since,
        )
        first = await scalar(
            "SELECT min(created) FROM notices WHERE created >= ?", now - baseline_s
        )
        by_reason: dict[str, int] = {}
        sql = (
            "SELECT r.value, count(*) FROM notices n, json_each(n.reasons) r"
            " WHERE n.created >= ? GROUP BY r.value"
        )
        async with reader.execute(sql, (since,)) as cur:
            by_reason = {row[0]: row[1] for row in await cur.fetchall()}

        async def top(expr: str, reason: str) -> tuple[str | None, int]:
            sql = (
                f"SELECT {expr} AS k, count(DISTINCT n.account) AS c FROM notices n"
                " WHERE n.created >= ? AND EXISTS (SELECT 1 FROM json_each(n.reasons)"
                " WHERE value = ?) AND k IS NOT NULL GROUP BY k ORDER BY c DESC LIMIT 1"
            )
            async with reader.execute(sql, (since, reason)) as cur:
                row = await cur.fetchone()
            return (row[0], row[1]) if row else (None, 0)

        provider, provider_accounts = await top(_NOTICE_PROVIDER, "new_provider")
        country, country_accounts = await top(_NOTICE_COUNTRY, "new_country")
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

    @_store_errors
    async def hold_queued(
        self, since: float, channels: Sequence[str], reason: str, now: float
    ) -> int:
        if not channels:
            return 0
        marks = ",".join("?" * len(channels))
        sql = (
            "UPDATE deliveries SET status = 'held', last_error = ?, updated = ?"
            f" WHERE status = 'queued' AND channel IN ({marks}) AND created >= ?"
        )
        return await self._write([(sql, [(reason, now, *channels, since)])])

    @_store_errors
    async def held_summary(self, filters: HeldFilter) -> dict[str, dict[str, int]]:
        where, params = _held_filter(filters)
        summary: dict[str, dict[str, int]] = {}
        reader = self._conn(self._reader)
        for name, expr, source in (
            (
                "reason",
                "r.value",
                "deliveries d JOIN notices n ON n.id = d.notice_id, json_each(n.reasons) r",
            ),
            ("provider", _NOTICE_PROVIDER, "deliveries d JOIN notices n ON n.id = d.notice_id"),
            ("country", _NOTICE_COUNTRY, "deliveries d JOIN notices n ON n.id = d.notice_id"),
            ("channel", "d.channel", "deliveries d JOIN notices n ON n.id = d.notice_id"),
        ):
            sql = (
                f"SELECT coalesce({expr}, 'unknown'), count(*) FROM {source}"
                f" WHERE {where} GROUP BY 1 ORDER BY 2 DESC"
            )
            async with reader.execute(sql, params) as cur:
                summary[name] = {str(row[0]): row[1] for row in await cur.fetchall()}
        return summary

    @_store_errors
    async def release_held(
        self, filters: HeldFilter, now: float, per_second: float, note: str = RELEASED
    ) -> int:
        where, params = _held_filter(filters)
        select = (
            "SELECT d.notice_id, d.channel FROM deliveries d JOIN notices n"
            f" ON n.id = d.notice_id WHERE {where} ORDER BY n.created"
        )
        async with self._conn(self._reader).execute(select, params) as cur:
            found = await cur.fetchall()
        # released notices go out at a bounded rate, oldest first, not as one burst
        sql = (
            "UPDATE deliveries SET status = 'queued', next_attempt = ?,"
            " deadline = max(deadline, ?), last_error = ?, updated = ?"
            " WHERE notice_id = ? AND channel = ? AND status = 'held'"
        )
        rows = [
            (now + i / per_second, now + i / per_second + 86400.0, note, now, notice_id, channel)
            for i, (notice_id, channel) in enumerate(found)
        ]
        return await self._write([(sql, rows)])

    @_store_errors
    async def discard_held(self, filters: HeldFilter, note: str, now: float) -> int:
        where, params = _held_filter(filters)
        sql = (
            "UPDATE deliveries SET status = 'discarded', last_error = ?, updated = ?"
            " WHERE (notice_id, channel) IN (SELECT d.notice_id, d.channel FROM deliveries d"
            f" JOIN notices n ON n.id = d.notice_id WHERE {where})"
        )
        return await self._write([(sql, [(note, now, *params)])])

    @_store_errors
    async def sample_origins(self, limit: int) -> list[tuple[str, str | None, str | None]]:
        sql = "SELECT prefix, country, provider FROM origins ORDER BY random() LIMIT ?"
        async with self._conn(self._reader).execute(sql, (limit,)) as cur:
            return [(r[0], r[1] or None, r[2] or None) for r in await cur.fetchall()]

    # -- privacy and history ---------------------------------------------------------------

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._conn(self._reader).execute(sql, params) as cur:
            names = [column[0] for column in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    @_store_errors
    async def account_record(self, account: str, decisions: int = 50) -> dict[str, Any] | None:
        found = await self._rows(
            "SELECT account, first_seen, last_seen, logins, failures, last_failure"
            " FROM accounts WHERE account = ?",
            (account,),
        )
        contact = await self.contact(account)
        if not found and contact is None:
            return None
        origins = await self._rows(
            "SELECT prefix, country, provider, as_org, first_seen, last_seen, count FROM origins"
            " WHERE account = ? ORDER BY last_seen DESC",
            (account,),
        )
        for row in origins:
            row["country"] = row["country"] or None
            row["provider"] = row["provider"] or None
        recent = await self._rows(
            "SELECT at, protocol, prefix, country, provider, network, reasons, notified, note,"
            " notice_id FROM decisions WHERE account = ? ORDER BY at DESC LIMIT ?",
            (account, decisions),
        )
        for row in recent:
            row["reasons"] = json.loads(row["reasons"])
            row["notified"] = bool(row["notified"])
        notices = await self._rows(
            "SELECT payload FROM notices WHERE account = ? ORDER BY created DESC", (account,)
        )
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
            "notices": [json.loads(row["payload"]) for row in notices],
        }

    @_store_errors
    async def forget(self, account: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        conn = self._conn(self._writer)
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for table in ("origins", "decisions", "notices", "contacts", "accounts"):
                    # deliveries go with their notices (ON DELETE CASCADE)
                    async with conn.execute(
                        f"DELETE FROM {table} WHERE account = ?",
                        (account,),
                    ) as cur:
                        counts[table] = max(cur.rowcount, 0)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        return counts

    @_store_errors
    async def housekeeping(
        self, now: float, address_retention_s: float, purge_origins_after_s: float
    ) -> dict[str, int]:
        scrub = (
            "UPDATE notices SET payload = json_set(payload, '$.remote',"
            " json_extract(payload, '$.prefix')) WHERE created < ?"
            " AND json_extract(payload, '$.remote') IS NOT json_extract(payload, '$.prefix')"
        )
        purge = (
            "DELETE FROM origins WHERE last_seen < (SELECT max(o.last_seen) FROM origins o"
            " WHERE o.account = origins.account) - ?"
        )
        conn = self._conn(self._writer)
        counts: dict[str, int] = {}
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                async with conn.execute(scrub, (now - address_retention_s,)) as cur:
                    counts["addresses_cut"] = max(cur.rowcount, 0)
                async with conn.execute(purge, (purge_origins_after_s,)) as cur:
                    counts["origins_purged"] = max(cur.rowcount, 0)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        return counts


def _lock_file(path: Path) -> IO[bytes]:
    """An exclusive lock on ``path`` (created if needed), held until the file is closed."""
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except BaseException:
        handle.close()
        raise
    return handle
