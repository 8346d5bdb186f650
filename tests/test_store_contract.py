"""The store contract: the same behaviour from every backend (SQLite, PostgreSQL).

The PostgreSQL cases run against ``postgresql://postgres@127.0.0.1:5432/test`` (override with
POLICY_SERVER_TEST_DSN), each test in a schema of its own that is dropped afterwards. When the
server is unreachable they are skipped, unless POLICY_SERVER_REQUIRE_POSTGRES=1 makes them fail.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# the backends (the ``backend`` and ``store`` fixtures come from stores.py through conftest)
from stores import (  # noqa: F401  (re-exported for other test modules)
    DSN,
    REQUIRE_POSTGRES,
    Backend,
    drop_schema,
    postgres_config,
    postgres_problem,
    require_postgres,
)

from policy_server.client import Client
from policy_server.config import PolicyConfig, StorageConfig
from policy_server.model import AccountSettings, AddressClass, History, Origin, Reason
from policy_server.policy import Decision, decide
from policy_server.store import open_store
from policy_server.store.base import (
    Block,
    BlockKind,
    BlockSource,
    BlockTarget,
    Contact,
    DeliveryResult,
    HeldFilter,
    ImmediateHistory,
    Outcome,
    Store,
    StoreError,
    SuccessfulLogin,
)
from policy_server.store.sql import SQLStore

POLICY = PolicyConfig()
DAY = 86400.0

JP = ("203.0.113.0/24", "JP", 64500)
US = ("198.51.100.0/24", "US", 64510)
DE = ("192.0.2.0/24", "DE", 64520)


def origin(
    prefix: str = JP[0], country: str | None = JP[1], asn: int | None = JP[2], address: str = ""
) -> Origin:
    return Origin(address or prefix.split("/")[0], AddressClass.GLOBAL, prefix, country, asn, None)


def login(
    account: str = "alice", o: Origin | None = None, at: float = 1000.0, protocol: str = "imap"
) -> SuccessfulLogin:
    o = o or origin()
    return SuccessfulLogin(account, account, protocol, o.address, o, at)


def policy_decide(history: History, o: Origin, at: float, client: Client | None = None) -> Decision:
    return decide(history, o, at, POLICY, client)


async def record(
    store: Store,
    item: SuccessfulLogin,
    touch_after: float = 3600.0,
    *,
    channels: tuple[str, ...] = ("hook",),
    coalesce_s: float = 0.0,
) -> Outcome:
    return await store.record_success(
        item,
        policy_decide,
        list(channels),
        touch_after=touch_after,
        deadline_s=3600.0,
        coalesce_s=coalesce_s,
    )


async def statuses(store: Store) -> dict[str, int]:
    return await store.outbox_counts()


async def notice_count(store: Store) -> int:
    return len(await store.list_deliveries(limit=10_000))


# -- recording logins --------------------------------------------------------------------------


async def test_first_login_creates_history_and_notice(store: Store) -> None:
    outcome = await record(store, login())
    assert outcome.decision.reasons == (Reason.FIRST_USE,)
    assert outcome.notice_id is not None and outcome.wrote
    history = await store.history("alice")
    assert [(k.prefix, k.country, k.provider, k.count) for k in history.origins] == [
        ("203.0.113.0/24", "JP", "AS64500", 1)
    ]
    (delivery,) = await store.list_deliveries()
    assert (delivery["id"], delivery["channel"], delivery["status"]) == (
        outcome.notice_id,
        "hook",
        "queued",
    )
    assert delivery["account"] == "alice" and delivery["reasons"] == ["first_use"]


async def test_fresh_repeat_login_writes_nothing(store: Store) -> None:
    await record(store, login(at=1000.0))
    outcome = await record(store, login(at=1100.0))
    assert not outcome.wrote and outcome.notice_id is None
    assert (await store.history("alice")).origins[0].count == 1
    record_ = await store.account_record("alice")
    assert record_ is not None and record_["account"]["logins"] == 1


async def test_stale_repeat_login_touches_last_seen(store: Store) -> None:
    await record(store, login(at=1000.0))
    outcome = await record(store, login(at=9000.0))
    assert outcome.wrote and outcome.notice_id is None
    known = (await store.history("alice")).origins[0]
    assert (known.first_seen, known.last_seen, known.count) == (1000.0, 9000.0, 2)


async def test_new_country_and_provider(store: Store) -> None:
    await record(store, login())
    other = await record(store, login(o=origin(*US), at=1001.0))
    assert other.decision.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    assert other.notice_id is not None
    unknown = await record(store, login(o=origin("198.18.0.0/24", None, None), at=1002.0))
    assert unknown.decision.reasons == () and unknown.notice_id is None
    assert len((await store.history("alice")).origins) == 3


async def test_unknown_country_and_provider_are_stored_as_such(store: Store) -> None:
    await record(store, login(o=origin("198.18.0.0/24", None, None)))
    known = (await store.history("alice")).origins[0]
    assert known.country is None and known.provider is None
    # the same unknown origin again is recognised (NULLs would never compare equal)
    again = await record(store, login(o=origin("198.18.0.0/24", None, None), at=1001.0))
    assert not again.wrote


async def test_a_fetchers_origin_keeps_its_network_and_the_owner_is_first_use(
    store: Store,
) -> None:
    fetcher = replace(origin("192.0.2.0/24", "US", 64496), network="mail-app")
    first = await record(store, login(o=fetcher))
    assert first.decision.reasons == (Reason.FIRST_USE,)
    (known,) = (await store.history("alice")).origins
    assert known.network == "mail-app"
    # the owner's own first login, after the mail app's servers: first use, not new country
    home = await record(store, login(o=origin(), at=1001.0))
    assert home.decision.reasons == (Reason.FIRST_USE,) and home.notice_id is not None
    networks = {k.prefix: k.network for k in (await store.history("alice")).origins}
    assert networks == {"192.0.2.0/24": "mail-app", JP[0]: None}
    record_ = await store.account_record("alice")
    assert record_ is not None
    assert {row["prefix"]: row["network"] for row in record_["origins"]} == networks


async def test_concurrent_first_logins_queue_one_notice(store: Store) -> None:
    outcomes = await asyncio.gather(*(record(store, login(at=1000.0 + i)) for i in range(20)))
    assert sum(1 for o in outcomes if o.notice_id) == 1
    assert await notice_count(store) == 1


async def test_concurrent_logins_of_many_accounts(store: Store) -> None:
    outcomes = await asyncio.gather(*(record(store, login(f"user{i}")) for i in range(50)))
    assert all(o.notice_id for o in outcomes)
    assert await statuses(store) == {"queued": 50}


async def test_failures_counted_apart_never_create_history(store: Store) -> None:
    await store.record_failure("nobody", 1000.0)
    assert await store.account_record("nobody") is None
    await record(store, login())
    await store.record_failure("alice", 1001.0)
    await store.record_failure("alice", 1002.0)
    found = await store.account_record("alice")
    assert found is not None
    assert (found["account"]["failures"], found["account"]["last_failure"]) == (2, 1002.0)
    assert len((await store.history("alice")).origins) == 1


async def test_a_failing_decision_fails_its_login_and_the_writer_lives_on(store: Store) -> None:
    def broken(history: History, o: Origin, at: float, client: Client | None) -> Decision:
        raise TypeError("a bug in a decision")

    with pytest.raises(StoreError, match="a bug in a decision"):
        await asyncio.wait_for(
            store.record_success(login(), broken, ["hook"], touch_after=0, deadline_s=60),
            timeout=5,
        )
    outcome = await asyncio.wait_for(record(store, login("bob")), timeout=5)
    assert outcome.notice_id is not None


async def test_logins_from_a_pending_notices_origin_join_it(store: Store) -> None:
    first = await record(store, login(at=1000.0), coalesce_s=600.0)
    await record(store, login(at=1010.0, protocol="smtp"), touch_after=0, coalesce_s=600.0)
    await record(store, login(at=1020.0, protocol="smtp"), touch_after=0, coalesce_s=600.0)
    assert first.notice_id is not None
    detail = await store.notice_detail(first.notice_id)
    assert detail is not None
    assert detail[0].protocols == ("imap", "smtp")


async def test_a_login_joins_a_notice_its_own_batch_created(backend: Backend) -> None:
    s = await open_store(backend.config.model_copy(update={"group_commit_wait_ms": 50}))
    assert isinstance(s, SQLStore)
    try:
        first, second = await asyncio.gather(
            record(s, login(at=1000.0), coalesce_s=600.0),
            record(s, login(at=1010.0, protocol="smtp"), touch_after=0, coalesce_s=600.0),
        )
        assert s.commits == 1  # one batch: the notice was not stored when the second came
        assert first.notice_id is not None and second.notice_id is None
        detail = await s.notice_detail(first.notice_id)
        assert detail is not None and detail[0].protocols == ("imap", "smtp")
    finally:
        await s.close()


async def test_concurrent_logins_share_commits(backend: Backend) -> None:
    s = await open_store(backend.config.model_copy(update={"group_commit_wait_ms": 20}))
    assert isinstance(s, SQLStore)
    try:
        await asyncio.gather(*(record(s, login(f"user{i}")) for i in range(50)))
        assert await statuses(s) == {"queued": 50}
        # all 50 first logins went through a few transactions, not 50
        assert s.committed_ops == 50
        assert s.commits <= 5
    finally:
        await s.close()


async def test_an_immediate_history_is_the_history(store: Store, backend: Backend) -> None:
    await record(store, login())
    await record(store, login(o=origin(*US), at=1001.0))
    # SQLite reads on the event loop; PostgreSQL needs a round trip, so it does not offer it
    assert isinstance(store, ImmediateHistory) == (backend.name == "sqlite")
    if isinstance(store, ImmediateHistory):
        assert store.history_now("alice") == await store.history("alice")
        assert store.history_now("nobody").is_new


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@settings(max_examples=25)
@given(
    st.lists(
        st.tuples(st.sampled_from(["alice", "bob"]), st.sampled_from([JP, US, DE])),
        min_size=1,
        max_size=8,
    )
)
def test_replaying_the_same_logins_queues_no_more_notices(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    logins: list[tuple[str, tuple[str, str, int]]],
) -> None:
    async def run() -> tuple[int, int]:
        schema = f"t_{secrets.token_hex(8)}"
        if kind == "postgres":
            await require_postgres()
            config = postgres_config(schema).model_copy(update={"group_commit_wait_ms": 0})
        else:
            path = tmp_path_factory.mktemp("replay") / "p.sqlite3"
            config = StorageConfig(path=str(path), group_commit_wait_ms=0)
        s = await open_store(config)
        try:
            items = [login(a, origin(*where), at=1000.0 + i) for i, (a, where) in enumerate(logins)]
            first = [await record(s, item) for item in items]
            # the same logins again, concurrently this time
            second = await asyncio.gather(*(record(s, item) for item in items))
            return sum(1 for o in first if o.notice_id), sum(1 for o in second if o.notice_id)
        finally:
            await s.close()
            if kind == "postgres":
                await drop_schema(schema)

    queued_first, queued_again = asyncio.run(run())
    assert queued_again == 0
    # each account notifies at most once per distinct unusual origin
    assert queued_first <= len(set(logins))


# -- the transaction ---------------------------------------------------------------------------


async def test_a_transaction_commits_its_block_or_none_of_it(store: Store) -> None:
    assert isinstance(store, SQLStore)
    insert = "INSERT INTO controls (name, value, updated) VALUES (?, ?, ?)"
    async with store.transaction() as tx:
        assert await tx.execute(insert, "kept", '{"n": 1}', 1.0) == 1
    assert await store.control("kept") == {"n": 1}
    with pytest.raises(RuntimeError, match="in the block"):
        async with store.transaction() as tx:
            await tx.execute(insert, "lost", '{"n": 2}', 2.0)
            raise RuntimeError("in the block")
    assert await store.control("lost") is None
    # a statement that fails takes the block's earlier writes with it
    with pytest.raises(store.driver_errors):
        async with store.transaction() as tx:
            await tx.execute(insert, "also lost", '{"n": 3}', 3.0)
            await tx.execute(insert, "kept", '{"n": 4}', 4.0)
    assert await store.control("also lost") is None
    assert await store.control("kept") == {"n": 1}
    # and the store goes on
    assert (await record(store, login())).notice_id is not None


async def test_data_survives_reopen(backend: Backend) -> None:
    s = await backend.open()
    outcome = await record(s, login())
    await s.close()
    s = await backend.open()
    try:
        assert len((await s.history("alice")).origins) == 1
        claimed = await s.claim("w", 10, now=2000.0, lease_s=30)
        assert [d.notice.id for d in claimed] == [outcome.notice_id]
    finally:
        await s.close()


# -- the queue ---------------------------------------------------------------------------------


async def test_notice_payload_keeps_reasons_and_history_snapshot(store: Store) -> None:
    await record(store, login())
    outcome = await record(store, login(o=origin(*DE), at=1001.0))
    batch = await store.claim("w", 10, now=2000.0, lease_s=30)
    notice = next(d.notice for d in batch if d.notice.id == outcome.notice_id)
    assert notice.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    assert [h["prefix"] for h in notice.history] == ["203.0.113.0/24"]
    assert notice.country == "DE" and notice.asn == 64520
    assert notice.time.isoformat() == "1970-01-01T00:16:41+00:00"


async def test_claim_finish_retry_dead(store: Store) -> None:
    for account in ("a", "b", "c"):
        await record(store, login(account))
    claimed = await store.claim("w1", 10, now=2000.0, lease_s=30)
    assert len(claimed) == 3 and all(d.attempts == 1 for d in claimed)
    assert await store.claim("w2", 10, now=2001.0, lease_s=30) == []
    by_account = {d.notice.account: d for d in claimed}
    a, b, c = by_account["a"], by_account["b"], by_account["c"]
    await store.finish(
        "w1",
        [
            DeliveryResult(a.notice.id, "hook", "sent"),
            DeliveryResult(b.notice.id, "hook", "queued", "HTTP 500", next_attempt=2100.0),
            DeliveryResult(c.notice.id, "hook", "dead", "HTTP 400"),
        ],
        now=2002.0,
    )
    assert await statuses(store) == {"sent": 1, "queued": 1, "dead": 1}
    assert await store.claim("w1", 10, now=2050.0, lease_s=30) == []
    again = await store.claim("w1", 10, now=2100.0, lease_s=30)
    assert [d.notice.id for d in again] == [b.notice.id] and again[0].attempts == 2
    dead = await store.list_deliveries("dead")
    assert dead[0]["last_error"] == "HTTP 400" and dead[0]["reasons"] == ["first_use"]
    assert dead[0]["account"] == "c"


async def test_claim_takes_at_most_the_limit(store: Store) -> None:
    for i in range(5):
        await record(store, login(f"u{i}"))
    first = await store.claim("w1", 3, now=2000.0, lease_s=30)
    second = await store.claim("w2", 3, now=2000.0, lease_s=30)
    assert (len(first), len(second)) == (3, 2)
    assert not {d.notice.id for d in first} & {d.notice.id for d in second}


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
    assert await statuses(store) == {"sending": 1}
    await store.finish("w2", [DeliveryResult(first[0].notice.id, "hook", "sent")], 2033.0)
    assert await statuses(store) == {"sent": 1}


async def test_folding_into_a_sent_notice(store: Store) -> None:
    one = await record(store, login(at=1000.0))
    two = await record(store, login(o=origin(*US), at=1001.0))
    three = await record(store, login(o=origin(*DE), at=1002.0))
    assert one.notice_id and two.notice_id and three.notice_id
    claimed = await store.claim("w1", 2, now=2000.0, lease_s=30)
    ids = {d.notice.id for d in claimed}
    # whichever two were claimed, the third is still queued
    (queued_id,) = {one.notice_id, two.notice_id, three.notice_id} - ids
    sent_id, claimed_other = sorted(ids)
    # another owner cannot fold a delivery it did not claim
    await store.finish(
        "w2", [DeliveryResult(claimed_other, "hook", "folded", folded_into=sent_id)], 2001.0
    )
    assert await statuses(store) == {"sending": 2, "queued": 1}
    await store.finish(
        "w1",
        [
            DeliveryResult(sent_id, "hook", "sent"),
            DeliveryResult(claimed_other, "hook", "folded", folded_into=sent_id),
            DeliveryResult(queued_id, "hook", "folded", folded_into=sent_id),
        ],
        2002.0,
    )
    assert await statuses(store) == {"sent": 1, "folded": 2}
    detail = await store.notice_detail(queued_id)
    assert detail is not None
    assert detail[1][0]["status"] == "folded" and detail[1][0]["folded_into"] == sent_id


async def test_deferred_and_held_give_back_the_attempt(store: Store) -> None:
    await record(store, login("a"))
    await record(store, login("b"))
    claimed = {d.notice.account: d for d in await store.claim("w", 10, 2000.0, 30)}
    await store.finish(
        "w",
        [
            DeliveryResult(
                claimed["a"].notice.id, "hook", "deferred", "quiet hours", next_attempt=2500.0
            ),
            DeliveryResult(claimed["b"].notice.id, "hook", "held", "breaker"),
        ],
        2001.0,
    )
    assert await statuses(store) == {"queued": 1, "held": 1}
    assert await store.claim("w", 10, 2400.0, 30) == []
    (again,) = await store.claim("w", 10, 2500.0, 30)
    assert again.notice.account == "a" and again.attempts == 1
    held = await store.list_deliveries("held")
    assert held[0]["attempts"] == 0 and held[0]["last_error"] == "breaker"


async def test_shadow_and_undeliverable(store: Store) -> None:
    await record(store, login("a"))
    await record(store, login("b"))
    claimed = {d.notice.account: d for d in await store.claim("w", 10, 2000.0, 30)}
    await store.finish(
        "w",
        [
            DeliveryResult(claimed["a"].notice.id, "hook", "shadow"),
            DeliveryResult(claimed["b"].notice.id, "hook", "undeliverable", "no address"),
        ],
        2001.0,
    )
    assert await statuses(store) == {"shadow": 1, "undeliverable": 1}
    # a shadowed delivery counts as sent for the per-account limit
    assert await store.sent_times("a", "hook", 0.0) == [2001.0]
    assert await store.sent_times("b", "hook", 0.0) == []


async def test_unknown_finish_status_is_refused(store: Store) -> None:
    await record(store, login())
    (d,) = await store.claim("w", 10, 2000.0, 30)
    with pytest.raises(StoreError):
        await store.finish("w", [DeliveryResult(d.notice.id, "hook", "lost")], 2001.0)


async def test_an_unknown_status_writes_nothing_of_its_batch(store: Store) -> None:
    await record(store, login("a"))
    await record(store, login("b"))
    claimed = {d.notice.account: d for d in await store.claim("w", 10, 2000.0, 30)}
    with pytest.raises(StoreError, match="unknown delivery status"):
        await store.finish(
            "w",
            [
                DeliveryResult(claimed["a"].notice.id, "hook", "sent"),
                DeliveryResult(claimed["b"].notice.id, "hook", "lost"),
            ],
            2001.0,
        )
    assert await statuses(store) == {"sending": 2}


# -- recipients and delivery rules -------------------------------------------------------------


async def test_contacts_upsert_and_remove(store: Store) -> None:
    assert await store.contact("alice") is None
    count = await store.upsert_contacts(
        [Contact("alice", "a@example.jp", None, "ja", "Asia/Tokyo"), Contact("bob", None, "+81")],
        1000.0,
    )
    assert count == 2
    assert await store.contact("alice") == Contact(
        "alice", "a@example.jp", None, "ja", "Asia/Tokyo"
    )
    await store.upsert_contacts([Contact("alice", "new@example.jp", None, "en", None)], 1001.0)
    assert await store.contact("alice") == Contact("alice", "new@example.jp", None, "en", None)
    assert await store.remove_contact("alice") is True
    assert await store.remove_contact("alice") is False
    assert await store.contact("alice") is None
    assert await store.contact("bob") == Contact("bob", None, "+81")


async def test_sent_times(store: Store) -> None:
    for at in (1000.0, 1001.0):
        await record(store, login(o=origin(*(US if at > 1000 else JP)), at=at))
    claimed = await store.claim("w", 10, 2000.0, 30)
    for i, d in enumerate(claimed):
        await store.finish("w", [DeliveryResult(d.notice.id, "hook", "sent")], 2100.0 + i)
    assert await store.sent_times("alice", "hook", 0.0) == [2100.0, 2101.0]
    assert await store.sent_times("alice", "hook", 2101.0) == [2101.0]
    assert await store.sent_times("alice", "mail", 0.0) == []
    assert await store.sent_times("bob", "hook", 0.0) == []


async def test_waiting_notices(store: Store) -> None:
    one = await record(store, login(at=1000.0))
    two = await record(store, login(o=origin(*US), at=1001.0))
    await record(store, login(o=origin(*DE), at=1002.0))
    await record(store, login("bob", at=1000.0))
    waiting = await store.waiting_notices("alice", "hook", 1001.0)
    assert [n.id for n in waiting] == [one.notice_id, two.notice_id]
    assert await store.waiting_notices("alice", "mail", 5000.0) == []
    # claimed ones are not waiting any more
    await store.claim("w", 10, 2000.0, 30)
    assert await store.waiting_notices("alice", "hook", 5000.0) == []


async def test_a_batch_reads_its_lookups_at_once(store: Store) -> None:
    """What the worker reads once per claimed batch: the same as the reads per account."""
    await store.upsert_contacts(
        [Contact("alice", "a@example.jp"), Contact("carol", None, "+81")], 900.0
    )
    assert await store.contacts(["alice", "bob", "carol", "alice"]) == {
        "alice": Contact("alice", "a@example.jp"),
        "carol": Contact("carol", None, "+81"),
    }
    assert await store.contacts([]) == {}
    sent = await record(store, login(at=1000.0))
    (d,) = await store.claim("w", 10, 1500.0, 30)
    await store.finish("w", [DeliveryResult(d.notice.id, "hook", "sent")], 1600.0)
    one = await record(store, login(o=origin(*US), at=1001.0))
    two = await record(store, login("bob", at=1002.0))
    pairs = [("alice", "hook"), ("bob", "hook"), ("carol", "hook")]
    assert await store.sent_times_of(pairs, 0.0) == {("alice", "hook"): [1600.0]}
    assert await store.sent_times_of(pairs, 1600.5) == {}
    assert await store.sent_times_of([("alice", "mail")], 0.0) == {}
    waiting = await store.waiting_notices_of(pairs)
    assert {pair: [(at, n.id) for at, n in found] for pair, found in waiting.items()} == {
        ("alice", "hook"): [(1001.0, one.notice_id)],
        ("bob", "hook"): [(1002.0, two.notice_id)],
    }
    assert sent.notice_id not in {n.id for found in waiting.values() for _, n in found}
    # only the pairs asked for: bob's notice is queued for "hook", not for "mail"
    assert await store.waiting_notices_of([("alice", "mail"), ("bob", "mail")]) == {}
    assert await store.waiting_notices_of([]) == {}


# -- operators ---------------------------------------------------------------------------------


async def test_notice_detail(store: Store) -> None:
    assert await store.notice_detail("nope") is None
    outcome = await record(store, login(), channels=("hook", "mail"))
    assert outcome.notice_id is not None
    detail = await store.notice_detail(outcome.notice_id)
    assert detail is not None
    notice, deliveries = detail
    assert notice.id == outcome.notice_id and notice.account == "alice"
    assert [(d["channel"], d["status"], d["attempts"]) for d in deliveries] == [
        ("hook", "queued", 0),
        ("mail", "queued", 0),
    ]
    assert set(deliveries[0]) == {
        "channel",
        "status",
        "attempts",
        "next_attempt",
        "deadline",
        "last_error",
        "folded_into",
        "updated",
    }
    assert deliveries[0]["deadline"] == 4600.0


async def test_retry_queues_dead_and_undeliverable_again(store: Store) -> None:
    outcome = await record(store, login(), channels=("hook", "mail", "sms"))
    assert outcome.notice_id is not None
    claimed = await store.claim("w", 10, 2000.0, 30)
    assert len(claimed) == 3
    await store.finish(
        "w",
        [
            DeliveryResult(outcome.notice_id, "hook", "dead", "HTTP 400"),
            DeliveryResult(outcome.notice_id, "mail", "undeliverable", "no address"),
            DeliveryResult(outcome.notice_id, "sms", "sent"),
        ],
        2001.0,
    )
    assert await store.retry(outcome.notice_id, 3000.0, 9000.0) == 2
    assert await store.retry(outcome.notice_id, 3000.0, 9000.0) == 0
    assert await statuses(store) == {"queued": 2, "sent": 1}
    again = await store.claim("w", 10, 3000.0, 30)
    assert sorted(d.channel for d in again) == ["hook", "mail"]
    assert all(d.deadline == 9000.0 for d in again)


async def test_purge_keeps_queued_and_held(store: Store) -> None:
    await record(store, login("sent-one", at=1000.0))
    (d,) = await store.claim("w", 10, 2000.0, 30)
    await store.finish("w", [DeliveryResult(d.notice.id, "hook", "sent")], 2001.0)
    await record(store, login("held-one", at=1500.0))
    assert await store.hold_queued(1500.0, ["hook"], "breaker", 2002.0) == 1
    await record(store, login("queued-one", at=1600.0))
    assert await store.purge(5000.0) == 1
    left = sorted(d["account"] for d in await store.list_deliveries())
    assert left == ["held-one", "queued-one"]
    # a notice newer than the cut stays whatever its state
    assert await store.purge(1000.0) == 0


# -- controls and the breaker ------------------------------------------------------------------


async def test_controls_compare_and_set(store: Store) -> None:
    assert await store.control("breaker") is None
    assert await store.set_control("breaker", {"state": "open", "n": 1}, 1000.0) is True
    assert await store.control("breaker") == {"state": "open", "n": 1}
    # already open: a second opener loses the race
    assert (
        await store.set_control("breaker", {"state": "open", "n": 2}, 1001.0, ("state", "open"))
        is False
    )
    assert await store.control("breaker") == {"state": "open", "n": 1}
    assert (
        await store.set_control("breaker", {"state": "closed"}, 1002.0, ("state", "closed")) is True
    )
    assert (
        await store.set_control("breaker", {"state": "closed"}, 1003.0, ("state", "closed"))
        is False
    )
    # a key the value lacks never equals the compared value; a missing row is simply set
    assert await store.set_control("pause", {"paused": True}, 1004.0, ("paused", True)) is True
    assert await store.set_control("pause", {"paused": True}, 1005.0, ("paused", True)) is False
    assert await store.set_control("pause", {"paused": False}, 1006.0, ("paused", False)) is True
    assert await store.control("pause") == {"paused": False}
    assert await store.set_control("geo", {"files": {"a": [1, 2]}}, 1007.0, ("x", None)) is True
    assert await store.control("geo") == {"files": {"a": [1, 2]}}


async def test_notice_rates(store: Store) -> None:
    now = 100_000.0
    # the baseline: three first uses an hour before
    for i in range(3):
        await record(store, login(f"old{i}", at=now - 3600 + i))
    # the window: five accounts known in JP appear from one new provider in the US
    for i in range(5):
        await record(store, login(f"acct{i}", at=now - 7200 + i))
    for i in range(5):
        await record(store, login(f"acct{i}", o=origin(*US), at=now - 60 + i))
    rates = await store.notice_rates(now, window_s=600.0, baseline_s=DAY)
    assert rates.window == 5
    assert rates.baseline == 8
    assert rates.baseline_span_s == pytest.approx(7200.0 - 600.0)
    assert rates.by_reason == {"new_country": 5, "new_provider": 5}
    assert (rates.top_provider, rates.top_provider_accounts) == ("AS64510", 5)
    assert (rates.top_country, rates.top_country_accounts) == ("US", 5)
    quiet = await store.notice_rates(now + 10 * DAY, window_s=600.0, baseline_s=DAY)
    assert (quiet.window, quiet.baseline, quiet.baseline_span_s) == (0, 0, 0.0)
    assert quiet.by_reason == {} and quiet.top_provider is None and quiet.top_country is None


async def test_hold_summary_release_and_discard(store: Store) -> None:
    for i in range(3):
        await record(store, login(f"u{i}", at=1000.0 + i))
    for i in range(3):
        await record(store, login(f"u{i}", o=origin(*US), at=1100.0 + i), channels=("hook", "ops"))
    await record(store, login("victim", at=1000.0))
    await record(store, login("victim", o=origin(*DE), at=1200.0))
    await record(store, login("before", at=1040.0))
    # only the queued deliveries through the named channels created since the cut are held
    assert await store.hold_queued(1050.0, ["hook"], "breaker", 1250.0) == 4
    assert await store.hold_queued(1050.0, [], "breaker", 1250.0) == 0
    summary = await store.held_summary(HeldFilter())
    assert summary["reason"] == {"new_country": 4, "new_provider": 4}
    assert summary["provider"] == {"AS64510": 3, "AS64520": 1}
    assert summary["country"] == {"US": 3, "DE": 1}
    assert summary["channel"] == {"hook": 4}
    assert (await store.held_summary(HeldFilter(country="de")))["channel"] == {"hook": 1}
    assert (await store.held_summary(HeldFilter(reason="first_use")))["channel"] == {}

    # the one real case is released first, at a bounded rate
    assert await store.release_held(HeldFilter(account="victim"), 2000.0, 1.0) == 1
    claimed = await store.claim("w", 20, 2000.0, 30)
    (released,) = [d for d in claimed if d.released]
    assert released.notice.account == "victim" and released.notice.country == "DE"
    # the rest were never held: the queued first uses and the ops channel
    assert len(claimed) == 1 + 5 + 3
    assert released.deadline >= 2000.0 + DAY
    # the storm is discarded, with a note of who did it
    assert await store.discard_held(HeldFilter(provider="AS64510"), "discarded by ops", 2001.0) == 3
    assert (await store.held_summary(HeldFilter()))["channel"] == {}
    discarded = await store.list_deliveries("discarded")
    assert {d["last_error"] for d in discarded} == {"discarded by ops"}
    assert await store.release_held(HeldFilter(), 2002.0, 1.0) == 0


async def test_release_is_paced_oldest_first(store: Store) -> None:
    for i in range(3):
        await record(store, login(f"u{i}", at=1000.0 + i))
    assert await store.hold_queued(0.0, ["hook"], "geo", 1100.0) == 3
    assert await store.release_held(HeldFilter(reason="first_use"), 2000.0, 0.5) == 3
    due = [(await store.claim("w", 10, now, 30)) for now in (2000.0, 2002.0, 2004.0)]
    assert [[d.notice.account for d in batch] for batch in due] == [["u0"], ["u1"], ["u2"]]
    assert all(d.released for batch in due for d in batch)


async def test_sample_origins(store: Store) -> None:
    assert await store.sample_origins(5) == []
    await record(store, login("a"))
    await record(store, login("b", o=origin("198.18.0.0/24", None, None)))
    await record(store, login("c", o=origin(*US)))
    sample = await store.sample_origins(10)
    assert sorted(sample, key=lambda s: s[0]) == [
        ("198.18.0.0/24", None, None),
        ("198.51.100.0/24", "US", "AS64510"),
        ("203.0.113.0/24", "JP", "AS64500"),
    ]
    assert len(await store.sample_origins(2)) == 2


# -- privacy and history -----------------------------------------------------------------------


async def test_account_record_and_forget(store: Store) -> None:
    assert await store.account_record("alice") is None
    for account in ("alice", "bob"):
        await record(store, login(account, at=1000.0))
        await record(store, login(account, o=origin(*US), at=1001.0))
    await store.record_failure("alice", 1002.0)
    await store.upsert_contacts([Contact("alice", "a@example.jp", None, None, None)], 1003.0)
    found = await store.account_record("alice")
    assert found is not None
    assert found["account"] == {
        "account": "alice",
        "first_seen": 1000.0,
        "last_seen": 1001.0,
        "logins": 2,
        "failures": 1,
        "last_failure": 1002.0,
    }
    assert found["contact"] == {
        "email": "a@example.jp",
        "phone": None,
        "language": None,
        "timezone": None,
    }
    assert [o["prefix"] for o in found["origins"]] == ["198.51.100.0/24", "203.0.113.0/24"]
    assert [d["reasons"] for d in found["decisions"]] == [
        ["new_country", "new_provider"],
        ["first_use"],
    ]
    assert all(d["notified"] is True for d in found["decisions"])
    assert [n["reasons"] for n in found["notices"]] == [
        ["new_country", "new_provider"],
        ["first_use"],
    ]
    assert found["notices"][1]["history"] == []
    limited = await store.account_record("alice", decisions=1)
    assert limited is not None and len(limited["decisions"]) == 1

    assert found["settings"] == AccountSettings().as_dict()
    trip = AccountSettings(notices=False, trip_country="FR", trip_until=9000.0)
    assert await store.save_settings("alice", trip, 1003.0) == trip
    chosen = await store.account_record("alice")
    assert chosen is not None and chosen["settings"]["trip_country"] == "FR"

    counts = await store.forget("alice")
    assert counts == {
        "origins": 2,
        "decisions": 2,
        "notices": 2,
        "contacts": 1,
        "blocks": 0,
        "feedback": 0,
        "account_settings": 1,
        "accounts": 1,
    }
    assert await store.settings("alice") == AccountSettings()
    assert await store.account_record("alice") is None
    assert (await store.history("alice")).origins == ()
    assert {d["account"] for d in await store.list_deliveries()} == {"bob"}
    assert await statuses(store) == {"queued": 2}
    assert await store.forget("alice") == dict.fromkeys(counts, 0)
    # a contact alone is a record too
    await store.upsert_contacts([Contact("carol", "c@example.jp")], 1004.0)
    only = await store.account_record("carol")
    assert only is not None and only["account"] == {"account": "carol"}


async def test_housekeeping_cuts_old_addresses_and_purges_forgotten_origins(
    store: Store,
) -> None:
    now = 1_000 * DAY

    async def at(account: str, where: tuple[str, str, int], address: str, when: float) -> None:
        o = origin(*where, address=address)
        await store.record_success(
            SuccessfulLogin(account, account, "imap", address, o, when),
            policy_decide,
            ["log"],
            touch_after=0,
            deadline_s=DAY,
        )

    await at("old", JP, "203.0.113.7", now - 400 * DAY)
    await at("old", US, "198.51.100.9", now - 1 * DAY)  # 399 days later, elsewhere
    await at("idle", JP, "203.0.113.7", now - 500 * DAY)  # idle since: keeps its origin
    await at("recent", US, "198.51.100.9", now - 3600)
    counts = await store.housekeeping(now, 30 * DAY, 365 * DAY)
    assert counts == {"addresses_cut": 2, "origins_purged": 1}
    remotes = []
    for account in ("old", "idle", "recent"):
        found = await store.account_record(account)
        assert found is not None
        remotes += [n["remote"] for n in found["notices"]]
    # the two notices older than 30 days keep only the prefix
    assert sorted(remotes) == ["198.51.100.9", "198.51.100.9", "203.0.113.0/24", "203.0.113.0/24"]
    origins = {a: [k.prefix for k in (await store.history(a)).origins] for a in ("old", "idle")}
    assert origins == {"old": ["198.51.100.0/24"], "idle": ["203.0.113.0/24"]}
    assert await store.housekeeping(now, 30 * DAY, 365 * DAY) == {
        "addresses_cut": 0,
        "origins_purged": 0,
    }


async def test_the_purge_goes_a_range_of_accounts_at_a_time_and_misses_none(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two origin rows a range, seven accounts take several transactions; each account's
    stale origin goes, whichever range its rows fall in, and its recent one stays."""
    from policy_server.store import sql

    monkeypatch.setattr(sql, "PURGE_CHUNK_ROWS", 2)
    now = 1_000 * DAY
    names = [f"user{i}" for i in range(7)]
    for name in names:
        for where, when in ((JP, now - 400 * DAY), (US, now - DAY)):
            await store.record_success(
                SuccessfulLogin(name, name, "imap", "203.0.113.7", origin(*where), when),
                policy_decide,
                ["log"],
                touch_after=0,
                deadline_s=DAY,
            )
    counts = await store.housekeeping(now, 30 * DAY, 365 * DAY)
    assert counts["origins_purged"] == len(names)
    for name in names:
        assert [k.country for k in (await store.history(name)).origins] == ["US"]
    assert (await store.housekeeping(now, 30 * DAY, 365 * DAY))["origins_purged"] == 0


async def test_closed_store_refuses_work(backend: Backend) -> None:
    s = await backend.open()
    await s.close()
    with pytest.raises(StoreError):
        await record(s, login())


# -- PostgreSQL: several nodes on one database -------------------------------------------------


async def open_nodes(schema: str, count: int) -> list[Store]:
    return list(await asyncio.gather(*(open_store(postgres_config(schema)) for _ in range(count))))


async def close_all(stores: list[Store]) -> None:
    await asyncio.gather(*(s.close() for s in stores))


async def test_postgres_nodes_migrate_together_once(postgres_schema: str) -> None:
    import asyncpg

    nodes = await open_nodes(postgres_schema, 4)
    await close_all(nodes)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": postgres_schema})
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version")]
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                postgres_schema,
            )
        }
    finally:
        await conn.close()
    assert versions == [1, 2, 3, 4, 5]
    assert {"accounts", "origins", "notices", "deliveries", "contacts", "decisions"} <= tables
    assert {"controls", "blocks", "block_version", "feedback"} <= tables


async def test_postgres_nodes_racing_on_the_same_accounts(postgres_schema: str) -> None:
    one, two = nodes = await open_nodes(postgres_schema, 2)
    try:
        accounts = [f"user{i}" for i in range(30)]

        async def node(store: Store, where: tuple[str, str, int]) -> list[Outcome]:
            return list(
                await asyncio.gather(
                    *(record(store, login(a, origin(*where), at=1000.0)) for a in accounts)
                )
            )

        from_jp, from_us = await asyncio.gather(node(one, JP), node(two, US))
        for account, a, b in zip(accounts, from_jp, from_us, strict=True):
            reasons = sorted([a.decision.reasons, b.decision.reasons])
            assert reasons == [
                (Reason.FIRST_USE,),
                (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER),
            ], account
            assert a.notice_id and b.notice_id
            found = await one.account_record(account)
            assert found is not None
            assert sorted(tuple(n["reasons"]) for n in found["notices"]) == [
                ("first_use",),
                ("new_country", "new_provider"),
            ]
            assert found["account"]["logins"] == 2
            assert len(found["origins"]) == 2
        assert await one.outbox_counts() == {"queued": 60}
    finally:
        await close_all(nodes)


async def test_postgres_owners_never_claim_the_same_delivery(postgres_schema: str) -> None:
    nodes = await open_nodes(postgres_schema, 2)
    try:
        await asyncio.gather(*(record(nodes[0], login(f"u{i}")) for i in range(60)))
        taken: dict[str, list[str]] = {"w0": [], "w1": []}

        async def worker(index: int) -> None:
            store, owner = nodes[index], f"w{index}"
            while True:
                batch = await store.claim(owner, 4, now=2000.0, lease_s=60)
                if not batch:
                    return
                taken[owner] += [d.notice.id for d in batch]

        await asyncio.gather(*(worker(i % 2) for i in range(6)))
        every = taken["w0"] + taken["w1"]
        assert len(every) == len(set(every)) == 60
        assert await nodes[1].outbox_counts() == {"sending": 60}
    finally:
        await close_all(nodes)


async def test_postgres_config_requires_a_dsn() -> None:
    from policy_server.config import ConfigError, config_from_mapping

    with pytest.raises(ConfigError) as err:
        config_from_mapping({"storage": {"backend": "postgres"}})
    assert "storage.dsn" in dict(err.value.errors)


async def test_postgres_unreachable_is_a_store_error() -> None:
    pytest.importorskip("asyncpg")
    config = StorageConfig(backend="postgres", dsn="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="cannot open PostgreSQL store"):
        await asyncio.wait_for(open_store(config), timeout=30)


async def test_many_history_reads_at_once_each_get_their_own(store: Store) -> None:
    accounts = [f"reader{i}" for i in range(40)]
    for i, account in enumerate(accounts):
        await record(store, login(account, at=1000.0 + i))
        if i % 2:
            await record(store, login(account, origin(*US), at=2000.0 + i))
    histories = await asyncio.gather(*(store.history(a) for a in [*accounts, "nobody"]))
    for i, (account, history) in enumerate(zip(accounts, histories, strict=False)):
        assert history.account == account
        assert len(history.origins) == (2 if i % 2 else 1)
        assert min(k.first_seen for k in history.origins) == 1000.0 + i
    assert histories[-1].is_new


# -- blocks ------------------------------------------------------------------------------------

PROVIDER_JP = BlockTarget(BlockKind.PROVIDER, "AS64500", "JP")
PREFIX_US = BlockTarget(BlockKind.PREFIX, "198.51.100.0/24")


def block(account: str, target: BlockTarget, until: float, created: float = 1000.0) -> Block:
    return Block(account, target, created, until, BlockSource.OWNER, notice_id="n1")


async def test_blocks_add_extend_list_and_clear(store: Store) -> None:
    first = await store.add_block(block("alice", PROVIDER_JP, 5000.0), 1000.0)
    assert first == block("alice", PROVIDER_JP, 5000.0)
    # the same target again extends it (never shortens), keeping the first creation
    later = Block("alice", PROVIDER_JP, 2000.0, 9000.0, BlockSource.OPERATOR)
    again = await store.add_block(later, 2000.0)
    assert (again.until, again.created, again.source, again.notice_id) == (
        9000.0,
        1000.0,
        BlockSource.OPERATOR,
        "n1",
    )
    shorter = await store.add_block(block("alice", PROVIDER_JP, 3000.0), 2500.0)
    assert shorter.until == 9000.0
    # the same provider in another country is another block
    await store.add_block(block("alice", BlockTarget(BlockKind.PROVIDER, "AS64500", ""), 4000.0), 1)
    await store.add_block(block("alice", PREFIX_US, 1500.0), 1000.0)
    await store.add_block(block("bob", PREFIX_US, 8000.0), 1000.0)
    listed = await store.list_blocks(1600.0, "alice")
    assert {b.target for b in listed} == {PROVIDER_JP, BlockTarget(BlockKind.PROVIDER, "AS64500")}
    assert len(await store.list_blocks(1600.0)) == 3
    assert len(await store.list_blocks(1000.0)) == 4
    assert await store.clear_blocks("alice", [PROVIDER_JP, PROVIDER_JP]) == 1
    assert await store.clear_blocks("alice", [PROVIDER_JP]) == 0
    # without targets every block of the account goes, expired ones too
    assert await store.clear_blocks("alice") == 2
    assert await store.clear_blocks("alice") == 0
    assert [b.account for b in await store.list_blocks(0.0)] == ["bob"]


async def test_active_blocks_are_read_again_only_after_a_change(store: Store) -> None:
    empty = await store.active_blocks(1000.0, -1)
    assert empty is not None and empty.blocks == ()
    assert await store.active_blocks(1000.0, empty.version) is None
    await store.add_block(block("alice", PROVIDER_JP, 5000.0), 1000.0)
    await store.add_block(block("bob", PREFIX_US, 1500.0), 1000.0)
    found = await store.active_blocks(2000.0, empty.version)
    assert found is not None and found.version > empty.version
    assert [(b.account, b.target) for b in found.blocks] == [("alice", PROVIDER_JP)]
    assert await store.active_blocks(2000.0, found.version) is None
    # a clear that deletes nothing changes nothing; one that does is seen
    assert await store.clear_blocks("carol") == 0
    assert await store.active_blocks(2000.0, found.version) is None
    assert await store.clear_blocks("alice") == 1
    cleared = await store.active_blocks(2000.0, found.version)
    assert cleared is not None and cleared.blocks == ()


async def test_blocks_are_in_the_account_record_and_forgotten(store: Store) -> None:
    await record(store, login("alice", at=1000.0))
    await store.add_block(block("alice", PROVIDER_JP, 5000.0), 1000.0)
    found = await store.account_record("alice")
    assert found is not None
    assert found["blocks"] == [
        {
            "account": "alice",
            "kind": "provider",
            "key": "AS64500",
            "country": "JP",
            "created": 1000.0,
            "until": 5000.0,
            "source": "owner",
            "notice_id": "n1",
        }
    ]
    # a block alone is a record too
    await store.add_block(block("dave", PREFIX_US, 5000.0), 1000.0)
    only = await store.account_record("dave")
    assert only is not None and len(only["blocks"]) == 1
    version = await store.active_blocks(0.0, -1)
    assert version is not None
    counts = await store.forget("alice")
    assert counts["blocks"] == 1
    assert [b.account for b in await store.list_blocks(0.0)] == ["dave"]
    assert await store.active_blocks(0.0, version.version) is not None


# -- what the sharper signals keep -----------------------------------------------------------


async def test_origins_keep_programs_places_and_the_owners_confirmation(store: Store) -> None:
    from policy_server.model import Location
    from policy_server.store.base import Answer, Feedback

    thunderbird, iphone = Client("Thunderbird", "128.3"), Client("iPhone Mail", "21A329")
    tokyo = replace(origin(), location=Location(35.6895, 139.6917, 20.0))
    first = await record(store, replace(login(o=tokyo), client=thunderbird))
    # a new program on the known origin writes it, even within the touch granularity
    again = await record(store, replace(login(o=tokyo, at=1060.0), client=iphone))
    assert again.wrote and again.decision.reasons == ()
    (home,) = (await store.history("alice")).origins
    assert home.clients == ("Thunderbird", "iPhone Mail") and home.count == 2
    assert home.location == Location(35.6895, 139.6917, 20.0)
    assert home.confirmed is None
    assert first.notice_id is not None
    answer = Feedback(first.notice_id, "alice", Answer.CONFIRMED, 1100.0, JP[0], "JP", "AS64500")
    await store.record_answer(answer)
    (home,) = (await store.history("alice")).origins
    assert home.confirmed == 1100.0
    # a denial takes the confirmation back
    await store.record_answer(replace(answer, answer=Answer.DENIED, at=1200.0))
    (home,) = (await store.history("alice")).origins
    assert home.confirmed is None
    record_ = await store.account_record("alice")
    assert record_ is not None and record_["origins"][0]["clients"] == [
        "Thunderbird",
        "iPhone Mail",
    ]


async def test_an_account_keeps_a_few_prefixes_per_provider(store: Store) -> None:
    # the default bound: four prefixes of one provider in one country
    for pool in range(12):
        o = origin(f"10.1.{pool}.0/24", "JP", 64999)
        await record(store, replace(login(o=o, at=1000.0 + pool * 7200), client=Client(f"p{pool}")))
    history = await store.history("alice")
    assert sorted(k.prefix for k in history.origins) == [
        "10.1.10.0/24",
        "10.1.11.0/24",
        "10.1.8.0/24",
        "10.1.9.0/24",
    ]
    assert sum(k.count for k in history.origins) == 12
    assert min(k.first_seen for k in history.origins) == 1000.0
    # each new row took over the programs of the one it replaced (at most eight per row)
    assert len({name for k in history.origins for name in k.clients}) == 12
    assert all(len(k.clients) <= 8 for k in history.origins)
    # another provider's rows are not touched
    await record(store, login(o=origin(*US), at=200_000.0))
    assert len((await store.history("alice")).origins) == 5


async def test_account_settings_and_the_alert_time(store: Store) -> None:
    assert await store.settings("alice") == AccountSettings()
    off = AccountSettings(notices=False)
    assert await store.save_settings("alice", off, 1000.0) == off
    # notices off: learned without a notice
    outcome = await record(store, login())
    assert outcome.decision.notify == () and outcome.decision.note == "notices off"
    assert outcome.notice_id is None
    on = AccountSettings(trip_country="US", trip_until=5000.0)
    assert await store.save_settings("alice", on, 1100.0) == on
    trip = await record(store, login(o=origin(*US), at=2000.0))
    assert trip.notice_id is None and trip.decision.note == "on a declared trip"
    assert (await store.settings("alice")).alerted_at is None


async def test_the_hijack_pattern_is_stored_once_a_day(store: Store) -> None:
    from policy_server.config import CompromiseConfig

    def with_compromise(h: History, o: Origin, at: float, client: Client | None) -> Decision:
        return decide(h, o, at, POLICY, client, CompromiseConfig(providers=3))

    found = []
    for i, place in enumerate((JP, US, DE, ("192.0.2.128/25", "DE", 64521))):
        outcome = await store.record_success(
            login(o=origin(*place), at=1000.0 + i),
            with_compromise,
            ["hook"],
            touch_after=3600.0,
            deadline_s=3600.0,
        )
        found.append(Reason.MANY_ORIGINS in outcome.decision.reasons)
    assert found == [False, False, True, False]
    assert (await store.settings("alice")).alerted_at == 1002.0
