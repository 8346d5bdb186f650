"""What only the SQLite store does: its file (WAL, the schema's versions), its locking, and
the query plans of the hot statements. Its behaviour is the contract's (test_store_contract.py)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from policy_server.client import Client
from policy_server.config import PolicyConfig, StorageConfig
from policy_server.model import AddressClass, History, Origin
from policy_server.policy import Decision, decide
from policy_server.store import open_store
from policy_server.store.base import DeliveryStatus, Outcome, Store, StoreError, SuccessfulLogin
from policy_server.store.sqlite import SQLiteStore

POLICY = PolicyConfig()


def login(account: str = "alice", at: float = 1000.0) -> SuccessfulLogin:
    o = Origin("203.0.113.0", AddressClass.GLOBAL, "203.0.113.0/24", "JP", 64500, None)
    return SuccessfulLogin(account, account, "imap", o.address, o, at)


def policy_decide(history: History, o: Origin, at: float, client: Client | None = None) -> Decision:
    return decide(history, o, at, POLICY, client)


async def record(store: Store, item: SuccessfulLogin) -> Outcome:
    return await store.record_success(
        item, policy_decide, ["hook"], touch_after=3600.0, deadline_s=3600.0
    )


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql).fetchall()


async def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    s = await open_store(StorageConfig(path=str(tmp_path / "s.sqlite3")))
    try:
        await record(s, login())
    finally:
        await s.close()
    db = tmp_path / "s.sqlite3"
    assert rows(db, "SELECT journal_mode FROM pragma_journal_mode") == [("wal",)]
    assert rows(db, "SELECT channel, status FROM deliveries") == [("hook", "queued")]


async def test_schema_version_recorded_once(tmp_path: Path) -> None:
    config = StorageConfig(path=str(tmp_path / "m.sqlite3"))
    for _ in range(2):
        s = await open_store(config)
        await s.close()
    assert rows(tmp_path / "m.sqlite3", "SELECT version FROM schema_version") == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
        (6,),
        (7,),
        (8,),
    ]


async def test_write_error_is_reported_to_the_caller(tmp_path: Path) -> None:
    config = StorageConfig(path=str(tmp_path / "l.sqlite3"), busy_timeout_ms=50)
    s = await open_store(config)
    blocker = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(Exception, match="locked"):
            await record(s, login())
        blocker.execute("ROLLBACK")
        assert (await record(s, login(at=1001.0))).notice_id is not None
    finally:
        blocker.close()
        await s.close()


def test_request_and_queue_queries_use_indexes(tmp_path: Path) -> None:
    """Every statement on the request path and the queue's hot path is an indexed search."""
    from policy_server.store import sql
    from policy_server.store import sqlite as impl

    async def create() -> None:
        s = await open_store(StorageConfig(path=str(tmp_path / "plan.sqlite3")))
        await s.close()

    asyncio.run(create())
    (accounts, values), *_ = impl.SQLiteDialect().any_of("account", ["a", "b"])
    (pending, _), *_ = impl.SQLiteDialect().any_of("n.account", ["a", "b"])
    (ids, _), *_ = impl.SQLiteDialect().any_of("id", ["n", "m"])
    (waiting, _), *_ = impl.SQLiteDialect().any_of("d.account", ["a", "b"])
    statements = {
        "origins of an account": (sql.SELECT_ORIGINS, ("a",)),
        "origins of a batch's accounts": (sql.SELECT_HISTORIES.format(values=accounts), values),
        "pending notices of a batch's accounts": (
            sql.SELECT_PENDING.format(values=pending),
            (*values, 0.0),
        ),
        "anything due": (impl._ANY_DUE, (0.0, 0.0)),
        "due": (impl._DUE, (0.0, 0.0, 10)),
        "claim": (impl._CLAIM, ("o", 0.0, 0.0, "n", "c")),
        "payloads of the claimed": (f"SELECT id, payload FROM notices WHERE {ids}", ("n", "m")),
        "upsert origin": (
            sql.UPSERT_ORIGIN,
            ("a", "p", "JP", "AS1", None, 0.0, 0.0, 1, None) + (None,) * 5,
        ),
        "replaced origin": (sql.DELETE_ORIGIN, ("a", "p", "JP", "AS1")),
        "settings of a batch's accounts": (sql.SELECT_SETTINGS.format(values=accounts), values),
        "alert": (sql.UPSERT_ALERT, ("a", 0.0, 0.0)),
        "upsert account": (sql.UPSERT_ACCOUNT, ("a", 0.0, 0.0)),
        "joined payload": (sql.UPDATE_PAYLOAD, ("{}", "a", "n")),
        "finish": (sql.FINISH[DeliveryStatus.SENT], (0.0, "n", "c", "o")),
        "fold": (sql.FOLD, ("n", 0.0, "m", "c", "o")),
        "the end of a purge range": (sql.PURGE_RANGE_END, ("a", 10)),
        "a purge range": (sql.PURGE_RANGE, ("a", "b", 0.0)),
        "waiting notices of a batch's accounts": (
            sql.SELECT_WAITING.replace("{join}", impl.SQLiteDialect.join_notices).format(
                values=waiting
            ),
            values,
        ),
        "contacts of a batch's accounts": (sql.SELECT_CONTACTS.format(values=accounts), values),
        "sent times of a batch's accounts": (
            sql.SELECT_SENT.format(values=accounts),
            (*values, 0.0),
        ),
    }
    with contextlib.closing(sqlite3.connect(tmp_path / "plan.sqlite3")) as conn, conn:
        for name, (statement, params) in statements.items():
            plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
            details = [row[3] for row in plan]
            scans = [d for d in details if d.startswith("SCAN") and "json_each" not in d]
            assert not scans, f"{name}: {details}"
            # a join reaches each notice by its key, never through all notices of the account
            if "JOIN notices" in statement:
                assert any("n USING PRIMARY KEY" in d for d in details), f"{name}: {details}"


async def test_a_write_waits_for_another_processs_lock_and_goes_on_once_it_is_free(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.sqlite3"
    store = await open_store(StorageConfig(path=str(db)))
    other = sqlite3.connect(db, isolation_level=None)
    try:
        assert isinstance(store, SQLiteStore)
        other.execute("BEGIN IMMEDIATE")  # as another process's writer would
        write = asyncio.ensure_future(record(store, login("alice")))
        for _ in range(10_000):  # it asks again and again meanwhile (bounded: 10 s at most)
            if store.busy_retries >= 3:
                break
            await asyncio.sleep(0.001)
        assert store.busy_retries >= 3 and not write.done()
        other.execute("COMMIT")
        outcome = await write
        assert outcome.notice_id is not None
        assert rows(db, "SELECT account FROM accounts") == [("alice",)]
    finally:
        other.close()
        await store.close()


async def test_a_write_gives_up_after_busy_timeout_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    store = await open_store(StorageConfig(path=str(db), busy_timeout_ms=200))
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError):
            await record(store, login("alice"))
        other.execute("COMMIT")
        assert rows(db, "SELECT count(*) FROM accounts") == [(0,)]
        # the lock free again, the store writes as before
        await record(store, login("bob"))
        assert rows(db, "SELECT account FROM accounts") == [("bob",)]
    finally:
        other.close()
        await store.close()


def connection_threads() -> set[threading.Thread]:
    """aiosqlite's threads alive, one per open connection: one left open keeps a process up."""
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


def assert_closed_since(before: set[threading.Thread]) -> None:
    """Every connection opened since ``before`` was closed: its thread ends (a closed
    connection's thread ends just after ``close`` returns)."""
    for thread in connection_threads() - before:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a connection was left open"


async def test_opening_waits_while_another_process_sets_the_file_up(tmp_path: Path) -> None:
    # A file another process is still setting up (here: a rollback-journal file in the middle
    # of a write) answers "database is locked" at once to the journal mode's change.
    db = tmp_path / "s.sqlite3"
    other = sqlite3.connect(db, isolation_level=None)
    store = SQLiteStore(StorageConfig(path=str(db)))
    threads = connection_threads()
    try:
        other.execute("CREATE TABLE unrelated (x)")
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO unrelated VALUES (1)")
        opening = asyncio.ensure_future(store.open())
        for _ in range(1000):  # bounded: 10 s at most
            if store.busy_retries >= 2 or opening.done():
                break
            await asyncio.sleep(0.01)
        assert not opening.done() and store.busy_retries >= 2
        other.execute("COMMIT")
        await opening
        await record(store, login("alice"))
        assert rows(db, "SELECT account FROM accounts") == [("alice",)]
        assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    finally:
        other.close()
        await store.close()
    assert_closed_since(threads)


async def test_opening_gives_up_after_busy_timeout_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    other = sqlite3.connect(db, isolation_level=None)
    store = SQLiteStore(StorageConfig(path=str(db), busy_timeout_ms=200))
    threads = connection_threads()
    try:
        other.execute("CREATE TABLE unrelated (x)")
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=r"cannot open SQLite store .*locked"):
            await store.open()
        other.execute("COMMIT")
        assert store.busy_retries > 0
        # every try's connections closed, not only the last one's
        assert_closed_since(threads)
    finally:
        other.close()
        await store.close()


def _open_in_rounds(folder: str, rounds: int, start: Any, results: Any) -> None:
    """One process of the test below: in each round, open and close a new store file."""

    async def one(path: str) -> str:
        store = SQLiteStore(StorageConfig(path=path))
        try:
            await store.open()
            await record(store, login("alice"))
        except StoreError as exc:
            return str(exc)
        finally:
            await store.close()
        return "ok"

    for n in range(rounds):
        start.wait(timeout=60)
        results.put(asyncio.run(one(str(Path(folder) / f"round{n}.sqlite3"))))


def test_processes_opening_a_new_file_together_all_open_it(tmp_path: Path) -> None:
    # serve --workers N starts its processes at once on a store file that may not exist yet
    processes, rounds = 4, 15
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_open_in_rounds, args=(str(tmp_path), rounds, start, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(processes * rounds)]
    for worker in workers:
        worker.join(timeout=60)
    assert [o for o in outcomes if o != "ok"] == []
    assert all(worker.exitcode == 0 for worker in workers)
