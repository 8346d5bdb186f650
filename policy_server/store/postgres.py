"""The shared store: PostgreSQL through an asyncpg connection pool.

Several nodes may share one database. Logins are committed in groups as with SQLite: one writer
task per process applies the waiting logins in one transaction. Decisions are taken inside that
transaction, after it has locked the accounts it writes (transaction-scoped advisory locks,
taken in a fixed order so that two nodes never deadlock), so two nodes racing on one account
see each other's commits and queue exactly one "first use" notice. Workers claim deliveries
with ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import asyncpg

from ..config import StorageConfig
from ..model import History, KnownOrigin
from .base import DeliveryStatus, Outcome, SchemaBehind, StoreError
from .plan import Op, known_origin
from .sql import HISTORY_ACCOUNT, SELECT_HISTORIES, Connection, Dialect, SQLStore, store_errors

log = logging.getLogger("policy_server.store")
S = DeliveryStatus

# A login batch that lost a deadlock (with an operator's bulk change) is tried again this often.
_RETRIES = 3
# Namespaces of the advisory locks: (namespace, hashtext(key)) pairs, never bare bigints.
_ACCOUNT_LOCKS = "policy_server.account"
_MIGRATION_LOCK = "policy_server.migrate."
# a worker identity: (namespace + schema, name)
_WORKER_LOCK = "policy_server.worker."

_LOCK_ACCOUNTS = (
    "SELECT pg_advisory_xact_lock(hashtext(?), h) FROM"
    " (SELECT DISTINCT hashtext(a) AS h FROM unnest(?::text[]) AS a ORDER BY 1) AS s"
)
# Due deliveries (or ones whose lease expired), locked without waiting for other claimers, then
# taken in the same statement.
_CLAIM = (
    "WITH due AS (SELECT account, notice_id, channel FROM deliveries"
    f" WHERE (status = '{S.QUEUED}' AND next_attempt <= ?)"
    f" OR (status = '{S.SENDING}' AND lease_until <= ?)"
    " LIMIT ? FOR UPDATE SKIP LOCKED)"
    f" UPDATE deliveries d SET status = '{S.SENDING}', claimed_by = ?, lease_until = ?,"
    " attempts = d.attempts + 1, updated = ? FROM due"
    " WHERE d.account = due.account AND d.notice_id = due.notice_id AND d.channel = due.channel"
    " RETURNING d.notice_id, d.channel, d.attempts, d.deadline, d.last_error, d.created"
)

_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders (outside string literals) as ``$1``, ``$2``, ..."""
    parts = sql.split("'")
    count = 0
    for i in range(0, len(parts), 2):  # the even parts are outside quotes
        pieces = parts[i].split("?")
        text = pieces[0]
        for piece in pieces[1:]:
            count += 1
            text += f"${count}{piece}"
        parts[i] = text
    return "'".join(parts)


# the request path's read of several accounts' histories at once (see history())
_SELECT_HISTORIES = numbered(SELECT_HISTORIES.format(values="account = ANY(?::text[])"))


def _count(status: str | None) -> int:
    """Rows a statement changed, from its command tag ("UPDATE 3", "INSERT 0 1")."""
    last = (status or "").rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresDialect(Dialect):
    """PostgreSQL: several writers at once (accounts under advisory locks, rows under
    ``FOR UPDATE``, claims ``SKIP LOCKED``), JSON columns as jsonb, lists as arrays."""

    name = "postgres"
    schema_version = (
        "CREATE TABLE IF NOT EXISTS schema_version"
        " (version integer PRIMARY KEY, applied double precision NOT NULL)"
    )
    has_schema_version = "SELECT 1 WHERE to_regclass('schema_version') IS NOT NULL"
    decision_order = "id"

    # -- several writers
    async def lock_accounts(self, conn: Connection, accounts: Sequence[str]) -> None:
        await conn.execute(_LOCK_ACCOUNTS, _ACCOUNT_LOCKS, list(accounts))

    lock_rows = " FOR UPDATE OF d"

    async def claim_due(
        self, conn: Connection, owner: str, limit: int, now: float, lease_until: float
    ) -> list[tuple[str, str, int, float, str | None]]:
        rows = await conn.fetch(_CLAIM, now, now, limit, owner, lease_until, now)
        rows.sort(key=lambda r: (r["created"], r["notice_id"], r["channel"]))
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def any_of(self, column: str, values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
        if values:
            yield f"{column} = ANY(?::text[])", [list(values)]

    # -- jsonb
    reason_rows = "CROSS JOIN LATERAL jsonb_array_elements_text(n.reasons) AS r(value)"
    has_reason = "n.reasons @> jsonb_build_array(?::text)"

    def json_text(self, column: str, key: str) -> str:
        return f"({column}->>'{key}')"

    def differs(self, key: str, value: Any) -> tuple[str, list[Any]]:
        condition = "(controls.value -> ?::text) IS DISTINCT FROM ?::jsonb"
        return condition, [key, json.dumps(value, ensure_ascii=False, separators=(",", ":"))]

    scrub_addresses = (
        "UPDATE notices SET payload = jsonb_set(payload, '{remote}',"
        " coalesce(payload->'prefix', 'null'::jsonb)) WHERE created < ?"
        " AND (payload->'remote') IS DISTINCT FROM (payload->'prefix')"
    )


class _Connection:
    """An asyncpg connection as the shared logic uses it: ``?`` placeholders numbered."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        return list(await self.raw.fetch(numbered(sql), *params))

    async def fetch_dicts(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await self.raw.fetch(numbered(sql), *params)]

    async def execute(self, sql: str, *params: Any) -> int:
        return _count(await self.raw.execute(numbered(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.raw.executemany(numbered(sql), rows)


class PostgresStore(SQLStore):
    """PostgreSQL through an asyncpg pool; group commit through one writer task per process."""

    dialect = PostgresDialect()
    driver_errors = _DRIVER_ERRORS

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        self._schema = config.schema
        self._pool: asyncpg.Pool | None = None
        # history reads waiting for the next shared query, and the queries in flight
        self._reads: dict[str, list[asyncio.Future[History]]] = {}
        self._read_tasks: set[asyncio.Task[None]] = set()
        # the connection holding this process's worker identities (session advisory locks)
        self._slots: Any = None

    # -- connection life -------------------------------------------------------------------

    async def open(self, migrate: bool = True) -> None:
        where = f"the PostgreSQL store (schema {self._schema})"
        try:
            self._pool = await asyncpg.create_pool(
                dsn=self._config.dsn,
                min_size=1,
                max_size=self._config.pool_size,
                **self._connect_args(),
            )
            async with self._pool.acquire() as conn:
                if migrate:
                    await self._migrate_schema(conn, where)
                else:
                    await self._check_schema(_Connection(conn), where)
        except SchemaBehind:
            await self.close()
            raise
        except _DRIVER_ERRORS as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store: {exc}") from exc
        self._start_writer("postgres-writer")

    def _connect_args(self) -> dict[str, Any]:
        timeout = self._config.command_timeout_s
        return {
            # a round trip longer than this fails (the connection is then dropped, see
            # _connection), so a half-open connection cannot stall the writer for ever
            "command_timeout": timeout,
            "timeout": timeout,
            "server_settings": {
                "search_path": _quote(self._schema),
                "application_name": "policy-server",
                "statement_timeout": str(int(timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(timeout * 2000)),
            },
        }

    async def close(self) -> None:
        await self._stop_writer()
        slots, self._slots = self._slots, None
        if slots is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await asyncio.wait_for(slots.close(), timeout=5)
            if not slots.is_closed():
                slots.terminate()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except (TimeoutError, *_DRIVER_ERRORS):
                pool.terminate()
        self._fail_queued()

    async def _migrate_schema(self, conn: Any, where: str) -> None:
        # Processes starting together must not migrate at the same time: the version check and
        # the scripts run under a session-level advisory lock named after the schema.
        key = _MIGRATION_LOCK + self._schema
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)

        async def apply(version: int, script: str) -> None:
            async with conn.transaction():
                await conn.execute(script)
                await conn.execute(
                    "INSERT INTO schema_version VALUES ($1, $2)", version, time.time()
                )

        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self._schema
            )
            if not exists:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self._schema)}")
            await self._migrate(_Connection(conn), apply, where)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    def _pool_(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; one that timed out is dropped at once, not handed back: a
        half-open connection would also hang its cancel request and its clean close."""
        async with self._pool_().acquire() as conn:
            try:
                yield conn
            except TimeoutError:
                conn.terminate()
                raise

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Connection]:
        async with self._connection() as conn:
            yield _Connection(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._connection() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                yield _Connection(conn)
            except TimeoutError:
                # no rollback on a connection that stopped answering: dropping it ends the
                # transaction on the server
                conn.terminate()
                raise
            except BaseException:
                await tx.rollback()
                raise
            await tx.commit()

    async def _lock_slot(self, name: str, slot: int) -> bool:
        if self._slots is None or self._slots.is_closed():
            self._slots = await asyncpg.connect(self._config.dsn, **self._connect_args())
        locked = await self._slots.fetchval(
            "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))",
            _WORKER_LOCK + self._schema,
            name,
        )
        return bool(locked)

    async def _apply_batch(self, batch: list[Op]) -> list[Outcome]:
        for attempt in range(_RETRIES):
            try:
                return await super()._apply_batch(batch)
            except (
                asyncpg.exceptions.DeadlockDetectedError,
                asyncpg.exceptions.SerializationError,
            ):
                if attempt == _RETRIES - 1:
                    raise
                log.warning("login batch lost a deadlock; trying again")
        raise StoreError("unreachable")  # pragma: no cover

    # -- reads -----------------------------------------------------------------------------

    @store_errors
    async def history(self, account: str) -> History:
        # Reads that arrive together share one query: under load, one round trip to the
        # database answers every report waiting on the loop at that moment.
        future: asyncio.Future[History] = asyncio.get_running_loop().create_future()
        self._reads.setdefault(account, []).append(future)
        if len(self._reads) == 1 and len(self._reads[account]) == 1:
            asyncio.get_running_loop().call_soon(self._start_reads)
        return await future

    def _start_reads(self) -> None:
        reads, self._reads = self._reads, {}
        task = asyncio.get_running_loop().create_task(self._read_histories(reads))
        self._read_tasks.add(task)
        task.add_done_callback(self._read_tasks.discard)

    async def _read_histories(self, reads: dict[str, list[asyncio.Future[History]]]) -> None:
        accounts = sorted(reads)
        found: dict[str, list[KnownOrigin]] = {account: [] for account in accounts}
        try:
            async with self._connection() as conn:
                rows = await conn.fetch(_SELECT_HISTORIES, accounts)
            for row in rows:
                found[row[HISTORY_ACCOUNT]].append(known_origin(row))
        except Exception as exc:
            error = exc if isinstance(exc, StoreError) else StoreError(f"history: {exc}")
            for futures in reads.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            return
        for account, futures in reads.items():
            history = History(account, tuple(found[account]))
            for future in futures:
                if not future.done():
                    future.set_result(history)
