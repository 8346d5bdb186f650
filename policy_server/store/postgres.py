"""The shared store: PostgreSQL through an asyncpg connection pool.

Several nodes may share one database. Logins are committed in groups as with SQLite: one writer
task per process takes every operation waiting in its queue, waits at most
``group_commit_wait_ms`` for more, and applies them in one transaction. Decisions are taken
inside that transaction, after it has locked the accounts it writes (transaction-scoped advisory
locks, taken in a fixed order so that two nodes never deadlock), so two nodes racing on one
account see each other's commits and queue exactly one "first use" notice. Workers claim
deliveries with ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import asyncpg

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
    known_origin,
    notice_from_payload,
    plan_batch,
)

log = logging.getLogger("policy_server.store")

# A login batch that lost a deadlock (with an operator's bulk change) is tried again this often.
_RETRIES = 3
# Namespaces of the advisory locks: (namespace, hashtext(key)) pairs, never bare bigints.
_ACCOUNT_LOCKS = "policy_server.account"
_MIGRATION_LOCK = "policy_server.migrate."


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("policy_server.store").joinpath("migrations", "postgres")
    found: list[tuple[int, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _count(status: str | None) -> int:
    """Rows a statement changed, from its command tag ("UPDATE 3", "INSERT 0 1")."""
    if not status:
        return 0
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_LOCK_ACCOUNTS = (
    "SELECT pg_advisory_xact_lock(hashtext($1), h) FROM"
    " (SELECT DISTINCT hashtext(a) AS h FROM unnest($2::text[]) AS a ORDER BY 1) AS s"
)
_SELECT_HISTORIES = (
    "SELECT account, prefix, country, provider, as_org, first_seen, last_seen, count"
    " FROM origins WHERE account = ANY($1::text[])"
)
_UPSERT_ORIGIN = (
    "INSERT INTO origins (account, prefix, country, provider, as_org, first_seen, last_seen,"
    " count) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)"
    " ON CONFLICT (account, prefix, country, provider) DO UPDATE SET"
    " last_seen = greatest(origins.last_seen, excluded.last_seen), count = origins.count + 1,"
    " as_org = coalesce(excluded.as_org, origins.as_org)"
)
_UPSERT_ACCOUNT = (
    "INSERT INTO accounts (account, first_seen, last_seen, logins) VALUES ($1, $2, $3, 1)"
    " ON CONFLICT (account) DO UPDATE SET"
    " last_seen = greatest(accounts.last_seen, excluded.last_seen), logins = accounts.logins + 1"
)
_INSERT_DECISION = (
    "INSERT INTO decisions (account, at, protocol, prefix, country, provider, network, reasons,"
    " notified, note, notice_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)"
)
_COUNT_FAILURE = "UPDATE accounts SET failures = failures + 1, last_failure = $1 WHERE account = $2"
_INSERT_NOTICE = (
    "INSERT INTO notices (id, account, created, reasons, payload, origin_key)"
    " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)"
)
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (notice_id, channel, account, status, next_attempt, deadline,"
    " created, updated) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7)"
)
# The newest notice about this origin that some channel has not delivered yet.
_PENDING_NOTICE = (
    "SELECT n.id, n.payload FROM notices n"
    " WHERE n.account = $1 AND n.origin_key = $2 AND n.created >= $3"
    " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.account = n.account"
    "  AND d.notice_id = n.id AND d.status IN ('queued', 'sending'))"
    " ORDER BY n.created DESC LIMIT 1"
)
# Due deliveries (or ones whose lease expired), locked without waiting for other claimers, then
# taken in the same statement.
_CLAIM = (
    "WITH due AS (SELECT account, notice_id, channel FROM deliveries"
    " WHERE (status = 'queued' AND next_attempt <= $1)"
    " OR (status = 'sending' AND lease_until <= $1)"
    " LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " UPDATE deliveries d SET status = 'sending', claimed_by = $3, lease_until = $4,"
    " attempts = d.attempts + 1, updated = $1 FROM due"
    " WHERE d.account = due.account AND d.notice_id = due.notice_id AND d.channel = due.channel"
    " RETURNING d.notice_id, d.channel, d.attempts, d.deadline, d.last_error, d.created"
)
_FINISH = {
    "sent": (
        "UPDATE deliveries SET status = 'sent', last_error = NULL, claimed_by = NULL,"
        " lease_until = NULL, updated = $1"
        " WHERE notice_id = $2 AND channel = $3 AND claimed_by = $4"
    ),
    "queued": (
        "UPDATE deliveries SET status = 'queued', last_error = $1, next_attempt = $2,"
        " claimed_by = NULL, lease_until = NULL, updated = $3"
        " WHERE notice_id = $4 AND channel = $5 AND claimed_by = $6"
    ),
    "dead": (
        "UPDATE deliveries SET status = 'dead', last_error = $1, claimed_by = NULL,"
        " lease_until = NULL, updated = $2"
        " WHERE notice_id = $3 AND channel = $4 AND claimed_by = $5"
    ),
    "undeliverable": (
        "UPDATE deliveries SET status = 'undeliverable', last_error = $1, claimed_by = NULL,"
        " lease_until = NULL, updated = $2"
        " WHERE notice_id = $3 AND channel = $4 AND claimed_by = $5"
    ),
    # rendered in dry-run mode and not sent: counts as sent for the per-account limit
    "shadow": (
        "UPDATE deliveries SET status = 'shadow', last_error = NULL, claimed_by = NULL,"
        " lease_until = NULL, updated = $1"
        " WHERE notice_id = $2 AND channel = $3 AND claimed_by = $4"
    ),
    # not attempts: give back the attempt the claim counted
    "held": (
        "UPDATE deliveries SET status = 'held', last_error = $1,"
        " attempts = greatest(attempts - 1, 0), claimed_by = NULL, lease_until = NULL,"
        " updated = $2 WHERE notice_id = $3 AND channel = $4 AND claimed_by = $5"
    ),
    "deferred": (
        "UPDATE deliveries SET status = 'queued', last_error = $1, next_attempt = $2,"
        " attempts = greatest(attempts - 1, 0), claimed_by = NULL, lease_until = NULL,"
        " updated = $3 WHERE notice_id = $4 AND channel = $5 AND claimed_by = $6"
    ),
}
# A folded delivery is either still queued or claimed by the owner that sent the notice.
_FOLD = (
    "UPDATE deliveries SET status = 'folded', folded_into = $1, last_error = NULL, updated = $2,"
    " claimed_by = NULL, lease_until = NULL WHERE notice_id = $3 AND channel = $4"
    " AND (status = 'queued' OR (status = 'sending' AND claimed_by = $5))"
)

# The provider of a notice as the breaker and the held filters name it.
_NOTICE_PROVIDER = (
    "CASE WHEN n.payload->>'asn' IS NOT NULL THEN 'AS' || (n.payload->>'asn')"
    " WHEN n.payload->>'as_org' IS NOT NULL THEN 'org:' || (n.payload->>'as_org') END"
)
_NOTICE_COUNTRY = "(n.payload->>'country')"
_JOIN_NOTICES = "deliveries d JOIN notices n ON n.account = d.account AND n.id = d.notice_id"


def _held_filter(filters: HeldFilter, first: int = 1) -> tuple[str, list[Any]]:
    """SQL conditions (on deliveries d joined to notices n) for held deliveries; the
    parameters are numbered from ``first``."""
    sql = "d.status = 'held'"
    params: list[Any] = []

    def mark(value: Any) -> str:
        params.append(value)
        return f"${first + len(params) - 1}"

    if filters.reason:
        sql += f" AND n.reasons ? {mark(filters.reason)}"
    if filters.provider:
        sql += f" AND {_NOTICE_PROVIDER} = {mark(filters.provider)}"
    if filters.country:
        sql += f" AND {_NOTICE_COUNTRY} = {mark(filters.country.upper())}"
    if filters.account:
        sql += f" AND d.account = {mark(filters.account)}"
    return sql, params


_P = ParamSpec("_P")
_R = TypeVar("_R")

_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


def _store_errors(
    method: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Report every database failure as StoreError, whatever the driver raised."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{method.__name__}: {exc}") from exc

    return wrapper


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(value: Any) -> str:
    """A json/jsonb column as text, whatever codec the connection uses."""
    return value if isinstance(value, str) else _dumps(value)


class PostgresStore(GroupCommit, Store):
    """PostgreSQL through an asyncpg pool; group commit through one writer task per process."""

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._schema = config.schema
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[Op] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        # history reads waiting for the next shared query, and the queries in flight
        self._reads: dict[str, list[asyncio.Future[History]]] = {}
        self._read_tasks: set[asyncio.Task[None]] = set()
        #: login transactions committed, and logins they carried (group-commit efficiency)
        self.commits = 0
        self.committed_ops = 0

    # -- connection life -------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                dsn=self._config.dsn,
                min_size=1,
                max_size=self._config.pool_size,
                server_settings={
                    "search_path": _quote(self._schema),
                    "application_name": "policy-server",
                },
            )
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
        except _DRIVER_ERRORS as exc:
            await self.close()
            raise StoreError(f"cannot open PostgreSQL store: {exc}") from exc
        self._writer_task = asyncio.create_task(self._write_loop(), name="postgres-writer")

    async def close(self) -> None:
        if self._writer_task is not None:
            # Let queued logins commit before the connections go away.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=5)
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except (TimeoutError, *_DRIVER_ERRORS):
                pool.terminate()
        self._fail_queued()

    async def _migrate(self, conn: Any) -> None:
        # Processes starting together must not migrate at the same time: the version check and
        # the scripts run under a session-level advisory lock named after the schema.
        key = _MIGRATION_LOCK + self._schema
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self._schema
            )
            if not exists:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self._schema)}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version integer PRIMARY KEY, applied double precision NOT NULL)"
            )
            current = int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            )
            for version, script in _migrations():
                if version <= current:
                    continue
                log.info("applying schema migration %04d to schema %s", version, self._schema)
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute(
                        "INSERT INTO schema_version VALUES ($1, $2)", version, time.time()
                    )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    def _pool_(self) -> Any:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        return list(await self._pool_().fetch(sql, *params))

    async def _fetchrow(self, sql: str, *params: Any) -> Any:
        return await self._pool_().fetchrow(sql, *params)

    async def _execute(self, sql: str, *params: Any) -> int:
        status: str = await self._pool_().execute(sql, *params)
        return _count(status)

    # -- reads -----------------------------------------------------------------------------

    @_store_errors
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
            for row in await self._fetch(_SELECT_HISTORIES, accounts):
                found[row[0]].append(known_origin(tuple(row)[1:]))
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

    @_store_errors
    async def release_claims(self, owner: str, now: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'queued', claimed_by = NULL, lease_until = NULL,"
            " attempts = greatest(attempts - 1, 0), next_attempt = $1, updated = $1"
            " WHERE status = 'sending' AND claimed_by = $2"
        )
        return await self._execute(sql, now, owner)

    @_store_errors
    async def oldest_queued(self) -> float | None:
        rows = await self._fetch("SELECT min(created) FROM deliveries WHERE status = 'queued'")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    @_store_errors
    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
        return {str(row[0]): int(row[1]) for row in rows}

    @_store_errors
    async def list_deliveries(
        self, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT d.notice_id AS id, d.channel, d.status, d.attempts, d.next_attempt,"
            " d.last_error, n.account, n.created, n.reasons"
            f" FROM {_JOIN_NOTICES}"
        )
        params: list[Any] = []
        if status:
            sql += " WHERE d.status = $1"
            params.append(status)
        sql += f" ORDER BY n.created DESC LIMIT ${len(params) + 1}"
        rows = await self._fetch(sql, *params, limit)
        return [{**dict(row), "reasons": json.loads(_text(row["reasons"]))} for row in rows]

    _quiet_errors = (*_DRIVER_ERRORS, StoreError)

    async def _apply_batch(self, batch: list[Op]) -> list[Outcome]:
        for attempt in range(_RETRIES):
            try:
                async with self._pool_().acquire() as conn, conn.transaction():
                    results = await self._apply_in_transaction(conn, batch)
            except (
                asyncpg.exceptions.DeadlockDetectedError,
                asyncpg.exceptions.SerializationError,
            ):
                if attempt == _RETRIES - 1:
                    raise
                log.warning("login batch lost a deadlock; trying again")
                continue
            self.commits += 1
            self.committed_ops += len(batch)
            return results
        raise StoreError("unreachable")  # pragma: no cover

    async def _apply_in_transaction(self, conn: Any, batch: list[Op]) -> list[Outcome]:
        # Every account this batch writes is locked first, in a fixed order, so that the
        # decisions below see every commit of other nodes about these accounts.
        locked = sorted(
            {op.login.account if isinstance(op, RecordOp) else op.account for op in batch}
        )
        await conn.execute(_LOCK_ACCOUNTS, _ACCOUNT_LOCKS, locked)
        accounts = sorted({op.login.account for op in batch if isinstance(op, RecordOp)})
        histories: dict[str, list[KnownOrigin]] = {account: [] for account in accounts}
        if accounts:
            for row in await conn.fetch(_SELECT_HISTORIES, accounts):
                histories[row[0]].append(known_origin(tuple(row)[1:]))
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
        self, conn: Any, login: SuccessfulLogin, key: str, since: float
    ) -> None:
        """Name this login's service in the pending notice about the same origin, if any."""
        row = await conn.fetchrow(_PENDING_NOTICE, login.account, key, since)
        if row is None:
            return
        data = json.loads(_text(row[1]))
        protocols = list(data.get("protocols") or [data["protocol"]])
        if login.protocol and login.protocol not in protocols:
            data["protocols"] = [*protocols, login.protocol]
            await conn.execute(
                "UPDATE notices SET payload = $1::jsonb WHERE account = $2 AND id = $3",
                _dumps(data),
                login.account,
                row[0],
            )

    # -- the queue -------------------------------------------------------------------------

    @_store_errors
    async def claim(self, owner: str, limit: int, now: float, lease_s: float) -> list[Delivery]:
        async with self._pool_().acquire() as conn, conn.transaction():
            claimed = list(await conn.fetch(_CLAIM, now, limit, owner, now + lease_s))
            if not claimed:
                return []
            ids = sorted({row["notice_id"] for row in claimed})
            payloads = {
                row[0]: _text(row[1])
                for row in await conn.fetch(
                    "SELECT id, payload FROM notices WHERE id = ANY($1::text[])", ids
                )
            }
        claimed.sort(key=lambda r: (r["created"], r["notice_id"], r["channel"]))
        return [
            Delivery(
                notice=notice_from_payload(payloads[row["notice_id"]]),
                channel=row["channel"],
                attempts=row["attempts"],
                deadline=row["deadline"],
                released=bool(row["last_error"] and str(row["last_error"]).startswith(RELEASED)),
            )
            for row in claimed
        ]

    @_store_errors
    async def finish(self, owner: str, results: Sequence[DeliveryResult], now: float) -> None:
        if not results:
            return
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
                raise StoreError(f"finish: unknown delivery status {r.status!r}")
        async with self._pool_().acquire() as conn, conn.transaction():
            for status, rows in grouped.items():
                if rows:
                    await conn.executemany(_FINISH[status], rows)
            if folds:
                await conn.executemany(_FOLD, folds)

    # -- recipients ------------------------------------------------------------------------

    @_store_errors
    async def contact(self, account: str) -> Contact | None:
        row = await self._fetchrow(
            "SELECT email, phone, language, timezone FROM contacts WHERE account = $1", account
        )
        if row is None:
            return None
        return Contact(account, row[0], row[1], row[2], row[3])

    @_store_errors
    async def upsert_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        if not contacts:
            return 0
        sql = (
            "INSERT INTO contacts (account, email, phone, language, timezone, updated)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account) DO UPDATE SET"
            " email = excluded.email, phone = excluded.phone, language = excluded.language,"
            " timezone = excluded.timezone, updated = excluded.updated"
        )
        rows = [(c.account, c.email, c.phone, c.language, c.timezone, now) for c in contacts]
        async with self._pool_().acquire() as conn, conn.transaction():
            await conn.executemany(sql, rows)
        return len(rows)

    @_store_errors
    async def remove_contact(self, account: str) -> bool:
        return await self._execute("DELETE FROM contacts WHERE account = $1", account) > 0

    # -- delivery rules --------------------------------------------------------------------

    @_store_errors
    async def sent_times(self, account: str, channel: str, since: float) -> list[float]:
        sql = (
            "SELECT updated FROM deliveries WHERE account = $1 AND channel = $2"
            " AND status IN ('sent', 'shadow') AND updated >= $3 ORDER BY updated"
        )
        return [float(row[0]) for row in await self._fetch(sql, account, channel, since)]

    @_store_errors
    async def waiting_notices(self, account: str, channel: str, until: float) -> list[Notice]:
        sql = (
            f"SELECT n.payload FROM {_JOIN_NOTICES}"
            " WHERE d.account = $1 AND d.channel = $2 AND d.status = 'queued'"
            " AND n.created <= $3 ORDER BY n.created"
        )
        rows = await self._fetch(sql, account, channel, until)
        return [notice_from_payload(_text(row[0])) for row in rows]

    # -- operators -------------------------------------------------------------------------

    @_store_errors
    async def notice_detail(self, notice_id: str) -> tuple[Notice, list[dict[str, Any]]] | None:
        row = await self._fetchrow("SELECT payload FROM notices WHERE id = $1", notice_id)
        if row is None:
            return None
        sql = (
            "SELECT channel, status, attempts, next_attempt, deadline, last_error, folded_into,"
            " updated FROM deliveries WHERE notice_id = $1 ORDER BY channel"
        )
        deliveries = [dict(r) for r in await self._fetch(sql, notice_id)]
        return notice_from_payload(_text(row[0])), deliveries

    @_store_errors
    async def retry(self, notice_id: str, now: float, deadline: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'queued', next_attempt = $1,"
            " deadline = greatest(deadline, $2), updated = $3"
            " WHERE notice_id = $4 AND status IN ('dead', 'undeliverable')"
        )
        return await self._execute(sql, now, deadline, now, notice_id)

    @_store_errors
    async def purge(self, before: float) -> int:
        sql = (
            "DELETE FROM notices n WHERE n.created < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.account = n.account AND d.notice_id = n.id"
            " AND d.status IN ('queued', 'sending', 'held'))"
        )
        return await self._execute(sql, before)

    # -- controls, breaker and held notices -------------------------------------------------

    @_store_errors
    async def control(self, name: str) -> dict[str, Any] | None:
        row = await self._fetchrow("SELECT value FROM controls WHERE name = $1", name)
        return None if row is None else dict(json.loads(_text(row[0])))

    @_store_errors
    async def set_control(
        self, name: str, value: dict[str, Any], now: float, unless: tuple[str, Any] | None = None
    ) -> bool:
        sql = (
            "INSERT INTO controls (name, value, updated) VALUES ($1, $2::jsonb, $3)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated"
        )
        params: list[Any] = [name, _dumps(value), now]
        if unless is not None:
            # compare and set: several processes may race to change the same switch
            sql += " WHERE (controls.value -> $4::text) IS DISTINCT FROM $5::jsonb"
            params.extend((unless[0], _dumps(unless[1])))
        return await self._execute(sql, *params) > 0

    @_store_errors
    async def notice_rates(self, now: float, window_s: float, baseline_s: float) -> NoticeRates:
        since = now - window_s
        async with self._pool_().acquire() as conn:
            window = await conn.fetchval("SELECT count(*) FROM notices WHERE created >= $1", since)
            baseline = await conn.fetchval(
                "SELECT count(*) FROM notices WHERE created >= $1 AND created < $2",
                now - baseline_s,
                since,
            )
            first = await conn.fetchval(
                "SELECT min(created) FROM notices WHERE created >= $1", now - baseline_s
            )
            by_reason = {
                str(row[0]): int(row[1])
                for row in await conn.fetch(
                    "SELECT r.value, count(*) FROM notices n"
                    " CROSS JOIN LATERAL jsonb_array_elements_text(n.reasons) AS r(value)"
                    " WHERE n.created >= $1 GROUP BY r.value",
                    since,
                )
            }

            async def top(expr: str, reason: str) -> tuple[str | None, int]:
                sql = (
                    f"SELECT k, c FROM (SELECT {expr} AS k, count(DISTINCT n.account) AS c"
                    " FROM notices n WHERE n.created >= $1 AND n.reasons ? $2 GROUP BY 1) AS s"
                    " WHERE k IS NOT NULL ORDER BY c DESC, k LIMIT 1"
                )
                row = await conn.fetchrow(sql, since, reason)
                return (str(row[0]), int(row[1])) if row else (None, 0)

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
        sql = (
            "UPDATE deliveries SET status = 'held', last_error = $1, updated = $2"
            " WHERE status = 'queued' AND channel = ANY($3::text[]) AND created >= $4"
        )
        return await self._execute(sql, reason, now, list(channels), since)

    @_store_errors
    async def held_summary(self, filters: HeldFilter) -> dict[str, dict[str, int]]:
        where, params = _held_filter(filters)
        summary: dict[str, dict[str, int]] = {}
        reasons = (
            f"{_JOIN_NOTICES} CROSS JOIN LATERAL jsonb_array_elements_text(n.reasons) AS r(value)"
        )
        async with self._pool_().acquire() as conn:
            for name, expr, source in (
                ("reason", "r.value", reasons),
                ("provider", _NOTICE_PROVIDER, _JOIN_NOTICES),
                ("country", _NOTICE_COUNTRY, _JOIN_NOTICES),
                ("channel", "d.channel", _JOIN_NOTICES),
            ):
                sql = (
                    f"SELECT coalesce({expr}, 'unknown'), count(*) FROM {source}"
                    f" WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1"
                )
                rows = await conn.fetch(sql, *params)
                summary[name] = {str(row[0]): int(row[1]) for row in rows}
        return summary

    @_store_errors
    async def release_held(
        self, filters: HeldFilter, now: float, per_second: float, note: str = RELEASED
    ) -> int:
        where, params = _held_filter(filters)
        select = (
            f"SELECT d.account, d.notice_id, d.channel FROM {_JOIN_NOTICES} WHERE {where}"
            " ORDER BY n.created, d.notice_id, d.channel FOR UPDATE OF d"
        )
        # released notices go out at a bounded rate, oldest first, not as one burst
        update = (
            "UPDATE deliveries d SET status = 'queued', next_attempt = u.at,"
            " deadline = greatest(d.deadline, u.at + 86400.0), last_error = $5, updated = $6"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])"
            " AS u(account, notice_id, channel, at)"
            " WHERE d.account = u.account AND d.notice_id = u.notice_id"
            " AND d.channel = u.channel AND d.status = 'held'"
        )
        async with self._pool_().acquire() as conn, conn.transaction():
            found = list(await conn.fetch(select, *params))
            if not found:
                return 0
            status: str = await conn.execute(
                update,
                [row[0] for row in found],
                [row[1] for row in found],
                [row[2] for row in found],
                [now + i / per_second for i in range(len(found))],
                note,
                now,
            )
        return _count(status)

    @_store_errors
    async def discard_held(self, filters: HeldFilter, note: str, now: float) -> int:
        where, params = _held_filter(filters, first=3)
        sql = (
            "UPDATE deliveries d SET status = 'discarded', last_error = $1, updated = $2"
            f" FROM notices n WHERE n.account = d.account AND n.id = d.notice_id AND {where}"
        )
        return await self._execute(sql, note, now, *params)

    @_store_errors
    async def sample_origins(self, limit: int) -> list[tuple[str, str | None, str | None]]:
        rows = await self._fetch(
            "SELECT prefix, country, provider FROM origins ORDER BY random() LIMIT $1", limit
        )
        return [(str(r[0]), r[1] or None, r[2] or None) for r in rows]

    # -- privacy and history ---------------------------------------------------------------

    async def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch(sql, *params)]

    @_store_errors
    async def account_record(self, account: str, decisions: int = 50) -> dict[str, Any] | None:
        found = await self._rows(
            "SELECT account, first_seen, last_seen, logins, failures, last_failure"
            " FROM accounts WHERE account = $1",
            account,
        )
        contact = await self.contact(account)
        if not found and contact is None:
            return None
        origins = await self._rows(
            "SELECT prefix, country, provider, as_org, first_seen, last_seen, count FROM origins"
            " WHERE account = $1 ORDER BY last_seen DESC",
            account,
        )
        for row in origins:
            row["country"] = row["country"] or None
            row["provider"] = row["provider"] or None
        recent = await self._rows(
            "SELECT at, protocol, prefix, country, provider, network, reasons, notified, note,"
            " notice_id FROM decisions WHERE account = $1 ORDER BY at DESC, id DESC LIMIT $2",
            account,
            decisions,
        )
        for row in recent:
            row["reasons"] = json.loads(_text(row["reasons"]))
            row["notified"] = bool(row["notified"])
        notices = await self._rows(
            "SELECT payload FROM notices WHERE account = $1 ORDER BY created DESC", account
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
            "notices": [json.loads(_text(row["payload"])) for row in notices],
        }

    @_store_errors
    async def forget(self, account: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        async with self._pool_().acquire() as conn, conn.transaction():
            # the same lock a login batch takes: no login of the account commits half-forgotten
            await conn.execute(_LOCK_ACCOUNTS, _ACCOUNT_LOCKS, [account])
            for table in ("origins", "decisions", "notices", "contacts", "accounts"):
                # deliveries go with their notices (ON DELETE CASCADE)
                status = await conn.execute(f"DELETE FROM {table} WHERE account = $1", account)
                counts[table] = _count(status)
        return counts

    @_store_errors
    async def housekeeping(
        self, now: float, address_retention_s: float, purge_origins_after_s: float
    ) -> dict[str, int]:
        scrub = (
            "UPDATE notices SET payload = jsonb_set(payload, '{remote}',"
            " coalesce(payload->'prefix', 'null'::jsonb)) WHERE created < $1"
            " AND (payload->'remote') IS DISTINCT FROM (payload->'prefix')"
        )
        purge = (
            "DELETE FROM origins o WHERE o.last_seen < (SELECT max(x.last_seen) FROM origins x"
            " WHERE x.account = o.account) - $1"
        )
        counts: dict[str, int] = {}
        async with self._pool_().acquire() as conn, conn.transaction():
            counts["addresses_cut"] = _count(await conn.execute(scrub, now - address_retention_s))
            counts["origins_purged"] = _count(await conn.execute(purge, purge_origins_after_s))
        return counts
