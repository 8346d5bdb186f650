"""The embedded store: one SQLite file in WAL mode through aiosqlite.

Three connections: every write goes through the writer, one transaction at a time (the write
lock, then ``BEGIN IMMEDIATE``), so writers never interleave and need no row locks; operator
and worker reads use the reader, beside the writer (WAL); the request path's one read, an
account's origins, runs on the event loop on a plain sqlite3 connection (``history_now``).

Another process's writer (``serve --workers N``, a delivery process, a command) holding the
file's write lock makes ``BEGIN IMMEDIATE`` wait. SQLite's own busy handler sleeps longer and
longer (up to 100 ms a time) between its tries, so a waiter may sleep on well after the lock is
free; the writer here asks again every millisecond instead (``BUSY_RETRY_S``), on the loop,
until ``[storage] busy_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, overload

import aiosqlite

from ..config import StorageConfig
from ..model import History
from .base import DeliveryStatus, SchemaBehind, StoreError
from .plan import known_origin
from .sql import SELECT_ORIGINS, Connection, Dialect, SQLStore, store_errors

S = DeliveryStatus

# SQLite's limit on bound parameters is 32766 in current builds; stay far below it.
_IN_CHUNK = 500

# A claim is two indexed steps in one transaction: find the due keys, then take each by its
# primary key (an UPDATE ... WHERE (a, b) IN (subquery) would scan the whole table).
_DUE = (
    "SELECT notice_id, channel, attempts, deadline, last_error FROM deliveries"
    f" WHERE status = '{S.QUEUED}' AND next_attempt <= ?"
    " UNION ALL"
    " SELECT notice_id, channel, attempts, deadline, last_error FROM deliveries"
    f" WHERE status = '{S.SENDING}' AND lease_until <= ?"
    " LIMIT ?"
)
_CLAIM = (
    f"UPDATE deliveries SET status = '{S.SENDING}', claimed_by = ?, lease_until = ?,"
    " attempts = attempts + 1, updated = ? WHERE notice_id = ? AND channel = ?"
)
_ANY_DUE = (
    f"SELECT 1 FROM deliveries WHERE status = '{S.QUEUED}' AND next_attempt <= ? UNION ALL"
    f" SELECT 1 FROM deliveries WHERE status = '{S.SENDING}' AND lease_until <= ? LIMIT 1"
)


class SQLiteDialect(Dialect):
    """SQLite: one writer at a time (no locks beyond the immediate transaction), JSON through
    the json1 functions, lists as ``IN (...)`` in chunks under the bound-parameter limit."""

    name = "sqlite"
    decision_order = "rowid"
    # notices are keyed by id alone here: with the account in the join too, SQLite walks all
    # of an account's notices for each delivery (a queue of one busy account goes quadratic)
    join_notices = "deliveries d JOIN notices n ON n.id = d.notice_id"

    # -- the queue: an idle queue is the common case, so a read says so without taking the
    # write lock, and polling never competes with the logins' commits
    any_due = _ANY_DUE

    async def claim_due(
        self, conn: Connection, owner: str, limit: int, now: float, lease_until: float
    ) -> list[tuple[str, str, int, float, str | None]]:
        due = await conn.fetch(_DUE, now, now, limit)
        await conn.executemany(_CLAIM, [(owner, lease_until, now, row[0], row[1]) for row in due])
        return [(row[0], row[1], row[2] + 1, row[3], row[4]) for row in due]

    def any_of(self, column: str, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        for start in range(0, len(values), _IN_CHUNK):
            chunk = list(values[start : start + _IN_CHUNK])
            yield f"{column} IN ({','.join('?' * len(chunk))})", chunk

    # -- JSON columns are text: json1
    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def differs(self, key: str, value: Any) -> tuple[str, list[Any]]:
        return "json_extract(controls.value, '$.' || ?) IS NOT ?", [key, value]

    has_reason = "EXISTS (SELECT 1 FROM json_each(n.reasons) WHERE value = ?)"
    reason_rows = "CROSS JOIN json_each(n.reasons) AS r"
    scrub_addresses = (
        "UPDATE notices SET payload = json_set(payload, '$.remote',"
        " json_extract(payload, '$.prefix')) WHERE created < ?"
        " AND json_extract(payload, '$.remote') IS NOT json_extract(payload, '$.prefix')"
    )

    # -- the schema's version
    schema_version = (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)"
    )
    has_schema_version = (
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    )


#: how often a writer asks again for the file's write lock another process holds
BUSY_RETRY_S = 0.001
#: how often an opening that found the file busy is tried again
OPEN_RETRY_S = 0.01


def _busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Connection:
    """An aiosqlite connection as the shared logic uses it."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.raw = conn

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        async with self.raw.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetch_dicts(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with self.raw.execute(sql, params) as cur:
            names = [column[0] for column in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    async def execute(self, sql: str, *params: Any) -> int:
        async with self.raw.execute(sql, params) as cur:
            return max(cur.rowcount, 0)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.raw.executemany(sql, rows)


class SQLiteStore(SQLStore):
    """SQLite through aiosqlite, WAL journal, group commit through one writer task."""

    dialect = SQLiteDialect()
    # aiosqlite raises ValueError for a closed connection
    driver_errors = (sqlite3.Error, ValueError)

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        self._path = Path(config.path)
        self._reader: _Connection | None = None
        self._writer: _Connection | None = None
        # The request path's one read (an account's origins) runs on the event loop: an indexed
        # point read from the page cache costs a few microseconds, far less than handing it to
        # a thread and back. WAL readers never wait for the writer.
        self._point: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        #: times ``BEGIN IMMEDIATE`` found the write lock held by another process
        self.busy_retries = 0
        # the worker identities this process holds (flocked files beside the database)
        self._slots: list[IO[bytes]] = []

    # -- connection life -------------------------------------------------------------------

    async def _connect(self, *, read_only: bool) -> _Connection:
        conn = await aiosqlite.connect(str(self._path), isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self._config.busy_timeout_ms)}")
            if read_only:
                await conn.execute("PRAGMA query_only = ON")
            else:
                await conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode survives a killed process; only an OS crash may lose the
                # last commits, which is what "synchronous = full" is for.
                await conn.execute(f"PRAGMA synchronous = {self._config.synchronous.upper()}")
                await conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            # closed here, or its thread would keep the process from exiting
            await conn.close()
            raise
        return _Connection(conn)

    async def open(self, migrate: bool = True) -> None:
        where = f"the SQLite store {self._path}"
        # A file another process is setting up (its journal mode, its schema) or tidying up as
        # it closes answers "database is locked" at once, without SQLite's busy handler: the
        # whole opening is tried again.
        try:
            await self._while_busy(
                lambda: self._connect_all(migrate, where), OPEN_RETRY_S, self._close_connections
            )
        except SchemaBehind:
            await self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open SQLite store {self._path}: {exc}") from exc
        self._start_writer("sqlite-writer")

    async def _connect_all(self, migrate: bool, where: str) -> None:
        if not migrate:
            await self._check_file(where)
            self._writer = await self._connect(read_only=False)
        else:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Processes starting together (serve --workers N) must not set up the file at the
            # same time: its journal mode, the version check and the scripts run under a lock
            # file beside the database.
            lock_path = self._path.with_name(self._path.name + ".lock")
            lock = await asyncio.to_thread(_lock_file, lock_path)
            try:
                self._writer = await self._connect(read_only=False)
                await self._migrate_file(self._writer, where)
            finally:
                lock.close()
        # from now on the writer waits for the write lock in _begin, not in SQLite
        await self._writer.raw.execute("PRAGMA busy_timeout = 0")
        self._reader = await self._connect(read_only=True)
        self._point = sqlite3.connect(str(self._path), isolation_level=None)
        # waiting on the loop must stay short; WAL makes waiting rare for a reader anyway
        self._point.execute("PRAGMA busy_timeout = 50")
        self._point.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        await self._stop_writer()
        await self._close_connections()
        for handle in self._slots:
            handle.close()
        self._slots.clear()
        self._fail_queued()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.raw.close()
        if self._point is not None:
            with contextlib.suppress(sqlite3.Error):
                self._point.close()
        self._reader = self._writer = self._point = None

    async def _check_file(self, where: str) -> None:
        """SchemaBehind unless the file exists with the newest schema; changes nothing."""
        try:
            self._path.stat()
        except FileNotFoundError:
            self._require_schema(0, where)  # any other OSError: the path is unusable
        conn = await aiosqlite.connect(f"file:{self._path}?mode=ro", uri=True)
        try:
            await self._check_schema(_Connection(conn), where)
        finally:
            await conn.close()

    async def _migrate_file(self, conn: _Connection, where: str) -> None:
        async def apply(version: int, script: str) -> None:
            # executescript commits on its own, so the version row goes in the same script.
            await conn.raw.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n"
                f"INSERT INTO schema_version VALUES ({version}, {time.time()!r});\nCOMMIT;"
            )

        await self._migrate(conn, apply, where)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Connection]:
        if self._reader is None:
            raise StoreError("store is not open")
        yield self._reader

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StoreError("store is not open")
            await self._begin(conn)
            try:
                yield conn
                await conn.raw.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.raw.execute("ROLLBACK")
                raise

    async def _begin(self, conn: _Connection) -> None:
        """``BEGIN IMMEDIATE``, asked again every ``BUSY_RETRY_S`` while another process holds
        the write lock, until ``busy_timeout_ms`` (then the store's error)."""
        await self._while_busy(lambda: conn.raw.execute("BEGIN IMMEDIATE"), BUSY_RETRY_S)

    async def _while_busy(
        self,
        attempt: Callable[[], Awaitable[object]],
        every_s: float,
        undo: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``attempt`` again every ``every_s`` while it finds the file locked by another
        process (``undo`` first, when given), until ``busy_timeout_ms``; then its error."""
        deadline = time.monotonic() + self._config.busy_timeout_ms / 1000
        while True:
            try:
                await attempt()
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            if undo is not None:
                await undo()
            self.busy_retries += 1
            await asyncio.sleep(every_s)

    async def _lock_slot(self, name: str, slot: int) -> bool:
        # one node shares a SQLite file: the slot alone names the process
        path = self._path.with_name(f"{self._path.name}-worker-{slot}.lock")
        handle = await asyncio.to_thread(_lock_file, path, wait=False)
        if handle is None:
            return False
        self._slots.append(handle)
        return True

    # -- reads -----------------------------------------------------------------------------

    @store_errors
    async def history(self, account: str) -> History:
        return self.history_now(account)

    def history_now(self, account: str) -> History:
        if self._point is None:
            raise StoreError("store is not open")
        try:
            rows = self._point.execute(SELECT_ORIGINS, (account,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"history: {exc}") from exc
        return History(account, tuple(known_origin(r) for r in rows))


@overload
def _lock_file(path: Path) -> IO[bytes]: ...


@overload
def _lock_file(path: Path, wait: bool) -> IO[bytes] | None: ...


def _lock_file(path: Path, wait: bool = True) -> IO[bytes] | None:
    """An exclusive lock on ``path`` (created if needed), held until the file is closed;
    with ``wait=False`` None at once when another process holds it."""
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle
