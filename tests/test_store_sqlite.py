"""The SQLite store on real files: history, group commit, the queue, durability."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_server.config import PolicyConfig, StorageConfig
from policy_server.model import AddressClass, History, Origin, Reason
from policy_server.policy import decide
from policy_server.store import open_store
from policy_server.store.base import DeliveryResult, Store, StoreError, SuccessfulLogin
from policy_server.store.sqlite import SQLiteStore

POLICY = PolicyConfig()


def origin(
    prefix: str = "203.0.113.0/24", country: str | None = "JP", asn: int | None = 64500
) -> Origin:
    return Origin(prefix.split("/")[0], AddressClass.GLOBAL, prefix, country, asn, None)


def login(account: str = "alice", o: Origin | None = None, at: float = 1000.0) -> SuccessfulLogin:
    o = o or origin()
    return SuccessfulLogin(account, account, "imap", o.address, o, at)


def policy_decide(history: History, o: Origin, at: float):  # type: ignore[no-untyped-def]
    return decide(history, o, at, POLICY)


async def record(store: Store, item: SuccessfulLogin, touch_after: float = 3600.0):  # type: ignore[no-untyped-def]
    return await store.record_success(
        item, policy_decide, ["hook"], touch_after=touch_after, deadline_s=3600.0
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(StorageConfig(path=str(tmp_path / "s.sqlite3"), group_commit_wait_ms=1))
    yield s
    await s.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql).fetchall()


async def test_first_login_creates_history_and_notice(store: Store, tmp_path: Path) -> None:
    outcome = await record(store, login())
    assert outcome.decision.reasons == (Reason.FIRST_USE,)
    assert outcome.notice_id is not None and outcome.wrote
    history = await store.history("alice")
    assert [(k.prefix, k.country, k.provider, k.count) for k in history.origins] == [
        ("203.0.113.0/24", "JP", "AS64500", 1)
    ]
    db = tmp_path / "s.sqlite3"
    assert rows(db, "SELECT channel, status FROM deliveries") == [("hook", "queued")]
    assert rows(db, "SELECT journal_mode FROM pragma_journal_mode") == [("wal",)]


async def test_fresh_repeat_login_writes_nothing(store: Store, tmp_path: Path) -> None:
    await record(store, login(at=1000.0))
    outcome = await record(store, login(at=1100.0))
    assert not outcome.wrote and outcome.notice_id is None
    assert (await store.history("alice")).origins[0].count == 1


async def test_stale_repeat_login_touches_last_seen(store: Store) -> None:
    await record(store, login(at=1000.0))
    outcome = await record(store, login(at=9000.0))
    assert outcome.wrote and outcome.notice_id is None
    known = (await store.history("alice")).origins[0]
    assert (known.first_seen, known.last_seen, known.count) == (1000.0, 9000.0, 2)


async def test_new_country_and_provider(store: Store) -> None:
    await record(store, login())
    other = await record(store, login(o=origin("198.51.100.0/24", "US", 64510), at=1001.0))
    assert other.decision.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    unknown = await record(store, login(o=origin("198.18.0.0/24", None, None), at=1002.0))
    assert unknown.decision.reasons == () and unknown.notice_id is None
    assert len((await store.history("alice")).origins) == 3


async def test_unknown_country_and_provider_are_stored_as_such(store: Store) -> None:
    await record(store, login(o=origin("198.18.0.0/24", None, None)))
    known = (await store.history("alice")).origins[0]
    assert known.country is None and known.provider is None
    # the same unknown origin again is recognised (NULLs would never compare equal)
    assert not (await record(store, login(o=origin("198.18.0.0/24", None, None), at=1001.0))).wrote


async def test_concurrent_first_logins_queue_one_notice(store: Store, tmp_path: Path) -> None:
    outcomes = await asyncio.gather(*(record(store, login(at=1000.0 + i)) for i in range(20)))
    assert sum(1 for o in outcomes if o.notice_id) == 1
    assert rows(tmp_path / "s.sqlite3", "SELECT count(*) FROM notices") == [(1,)]


async def test_concurrent_logins_share_commits(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    s = await open_store(StorageConfig(path=str(path), group_commit_wait_ms=20))
    assert isinstance(s, SQLiteStore)
    try:
        await asyncio.gather(*(record(s, login(f"user{i}")) for i in range(50)))
        assert rows(path, "SELECT count(*) FROM accounts") == [(50,)]
        assert rows(path, "SELECT count(*) FROM notices") == [(50,)]
        # all 50 first logins went through a few transactions, not 50
        assert s.committed_ops == 50
        assert s.commits <= 5
    finally:
        await s.close()


async def test_failures_counted_apart_never_create_history(store: Store, tmp_path: Path) -> None:
    await store.record_failure("nobody", 1000.0)
    assert rows(tmp_path / "s.sqlite3", "SELECT count(*) FROM accounts") == [(0,)]
    await record(store, login())
    await store.record_failure("alice", 1001.0)
    await store.record_failure("alice", 1002.0)
    assert rows(tmp_path / "s.sqlite3", "SELECT failures, last_failure FROM accounts") == [
        (2, 1002.0)
    ]
    assert len((await store.history("alice")).origins) == 1


async def test_notice_payload_keeps_reasons_and_history_snapshot(store: Store) -> None:
    await record(store, login())
    outcome = await record(store, login(o=origin("192.0.2.0/24", "DE", 64520), at=1001.0))
    batch = await store.claim("w", 10, now=2000.0, lease_s=30)
    notice = next(d.notice for d in batch if d.notice.id == outcome.notice_id)
    assert notice.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    assert [h["prefix"] for h in notice.history] == ["203.0.113.0/24"]
    assert notice.country == "DE" and notice.asn == 64520
    assert notice.time.isoformat() == "1970-01-01T00:16:41+00:00"


async def test_claim_finish_retry_dead(store: Store) -> None:
    await record(store, login("a"))
    await record(store, login("b"))
    await record(store, login("c"))
    claimed = await store.claim("w1", 10, now=2000.0, lease_s=30)
    assert len(claimed) == 3 and all(d.attempts == 1 for d in claimed)
    assert await store.claim("w2", 10, now=2001.0, lease_s=30) == []
    a, b, c = claimed
    await store.finish(
        "w1",
        [
            DeliveryResult(a.notice.id, "hook", "sent"),
            DeliveryResult(b.notice.id, "hook", "queued", "HTTP 500", next_attempt=2100.0),
            DeliveryResult(c.notice.id, "hook", "dead", "HTTP 400"),
        ],
        now=2002.0,
    )
    assert await store.outbox_counts() == {"sent": 1, "queued": 1, "dead": 1}
    assert await store.claim("w1", 10, now=2050.0, lease_s=30) == []
    again = await store.claim("w1", 10, now=2100.0, lease_s=30)
    assert [d.notice.id for d in again] == [b.notice.id] and again[0].attempts == 2
    dead = await store.list_deliveries("dead")
    assert dead[0]["last_error"] == "HTTP 400" and dead[0]["reasons"] == ["first_use"]


async def test_expired_lease_returns_claim_and_stale_owner_cannot_finish(store: Store) -> None:
    await record(store, login())
    first = await store.claim("dead-worker", 10, now=2000.0, lease_s=30)
    assert await store.claim("w2", 10, now=2029.0, lease_s=30) == []
    taken = await store.claim("w2", 10, now=2031.0, lease_s=30)
    assert [d.notice.id for d in taken] == [first[0].notice.id]
    assert taken[0].attempts == 2
    # the first owner's late result does not overwrite the new owner's claim
    await store.finish(
        "dead-worker", [DeliveryResult(first[0].notice.id, "hook", "dead", "x")], 2032.0
    )
    assert await store.outbox_counts() == {"sending": 1}
    await store.finish("w2", [DeliveryResult(first[0].notice.id, "hook", "sent")], 2033.0)
    assert await store.outbox_counts() == {"sent": 1}


async def test_data_survives_reopen(tmp_path: Path) -> None:
    config = StorageConfig(path=str(tmp_path / "r.sqlite3"))
    s = await open_store(config)
    outcome = await record(s, login())
    await s.close()
    s = await open_store(config)
    try:
        assert len((await s.history("alice")).origins) == 1
        claimed = await s.claim("w", 10, now=2000.0, lease_s=30)
        assert [d.notice.id for d in claimed] == [outcome.notice_id]
    finally:
        await s.close()


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


@settings(max_examples=25)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alice", "bob"]),
            st.sampled_from(["203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_replaying_the_same_logins_queues_no_more_notices(
    tmp_path_factory: pytest.TempPathFactory, logins: list[tuple[str, str]]
) -> None:
    geo = {
        "203.0.113.0/24": ("JP", 64500),
        "198.51.100.0/24": ("US", 64510),
        "192.0.2.0/24": ("DE", 64520),
    }

    async def run() -> tuple[int, int]:
        path = tmp_path_factory.mktemp("replay") / "p.sqlite3"
        s = await open_store(StorageConfig(path=str(path), group_commit_wait_ms=0))
        try:
            items = [login(a, origin(p, *geo[p]), at=1000.0 + i) for i, (a, p) in enumerate(logins)]
            first = [await record(s, item) for item in items]
            # the same logins again, concurrently this time
            second = await asyncio.gather(*(record(s, item) for item in items))
            return sum(1 for o in first if o.notice_id), sum(1 for o in second if o.notice_id)
        finally:
            await s.close()

    queued_first, queued_again = asyncio.run(run())
    assert queued_again == 0
    # each account notifies at most once per distinct unusual origin
    assert queued_first <= len(set(logins))


async def test_a_failing_decision_fails_its_login_and_the_writer_lives_on(store: Store) -> None:
    def broken(history: History, o: Origin, at: float):  # type: ignore[no-untyped-def]
        raise TypeError("a bug in a decision")

    with pytest.raises(StoreError, match="a bug in a decision"):
        await asyncio.wait_for(
            store.record_success(login(), broken, ["hook"], touch_after=0, deadline_s=60),
            timeout=5,
        )
    outcome = await asyncio.wait_for(record(store, login("bob")), timeout=5)
    assert outcome.notice_id is not None


async def test_purge_keeps_held_notices(store: Store, tmp_path: Path) -> None:
    await record(store, login("held-one", at=1000.0))
    await record(store, login("sent-one", at=1000.0))
    with contextlib.closing(sqlite3.connect(tmp_path / "s.sqlite3")) as conn, conn:
        conn.execute(
            "UPDATE deliveries SET status = CASE account WHEN 'held-one' THEN 'held'"
            " ELSE 'sent' END"
        )
    assert await store.purge(2000.0) == 1
    assert rows(tmp_path / "s.sqlite3", "SELECT account FROM notices") == [("held-one",)]


def test_request_and_queue_queries_use_indexes(tmp_path: Path) -> None:
    """Every statement on the request path and the queue's hot path is an indexed search."""
    from policy_server.store import sqlite as impl

    async def create() -> None:
        s = await open_store(StorageConfig(path=str(tmp_path / "plan.sqlite3")))
        await s.close()

    asyncio.run(create())
    statements = {
        "origins of an account": (impl._SELECT_ORIGINS, ("a",)),
        "pending notice of an origin": (impl._PENDING_NOTICE, ("a", "k", 0.0)),
        "anything due": (impl._ANY_DUE, (0.0, 0.0)),
        "due": (impl._DUE, (0.0, 0.0, 10)),
        "claim": (impl._CLAIM, ("o", 0.0, 0.0, "n", "c")),
        "upsert origin": (impl._UPSERT_ORIGIN, ("a", "p", "JP", "AS1", None, 0.0, 0.0)),
        "upsert account": (impl._UPSERT_ACCOUNT, ("a", 0.0, 0.0)),
        "finish": (impl._FINISH["sent"], (0.0, "n", "c", "o")),
        "fold": (impl._FOLD, ("n", 0.0, "m", "c", "o")),
    }
    with contextlib.closing(sqlite3.connect(tmp_path / "plan.sqlite3")) as conn, conn:
        for name, (sql, params) in statements.items():
            plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            details = [row[3] for row in plan]
            scans = [d for d in details if d.startswith("SCAN") and "json_each" not in d]
            assert not scans, f"{name}: {details}"
