"""The plan of a login batch and the repeat rule: pure functions, no database at all."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Sequence

import pytest

from policy_server.client import Client
from policy_server.config import PolicyConfig
from policy_server.model import AddressClass, History, KnownOrigin, Origin, Reason
from policy_server.policy import Decision, decide, fresh_repeat, repeat_writes
from policy_server.store.base import SuccessfulLogin
from policy_server.store.plan import (
    FailureOp,
    Op,
    PendingNotice,
    RecordOp,
    notice_from_payload,
    origin_key,
    plan_batch,
    prefetch_pending,
)

POLICY = PolicyConfig()
JP = Origin("203.0.113.7", AddressClass.GLOBAL, "203.0.113.0/24", "JP", 64500, "JP Net")
US = Origin("198.51.100.9", AddressClass.GLOBAL, "198.51.100.0/24", "US", 64510, None)
JP_KEY = origin_key(JP.prefix, JP.country, JP.provider)
# only to make the futures the ops carry (the plan never looks at them); never run
LOOP = asyncio.new_event_loop()


def teardown_module() -> None:
    LOOP.close()


def policy_decide(history: History, o: Origin, at: float, client: Client | None = None) -> Decision:
    return decide(history, o, at, POLICY, client)


def op(
    account: str = "alice",
    o: Origin = JP,
    at: float = 1000.0,
    protocol: str = "imap",
    *,
    touch_after: float = 3600.0,
    coalesce_s: float = 600.0,
    channels: Sequence[str] = ("hook",),
) -> RecordOp:
    return RecordOp(
        SuccessfulLogin(account, account, protocol, o.address, o, at),
        policy_decide,
        channels,
        touch_after,
        3600.0,
        30.0,
        coalesce_s,
        LOOP.create_future(),
    )


def stored(
    o: Origin = JP, first_seen: float = 0.0, last_seen: float = 500.0, count: int = 3
) -> KnownOrigin:
    return KnownOrigin(o.prefix, o.country, o.provider, o.as_org, first_seen, last_seen, count)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"n{next(counter)}"


def failure(account: str, at: float) -> FailureOp:
    return FailureOp(account, at, LOOP.create_future())


# -- the repeat rule (the recorder's and the planner's) -----------------------------------------


@pytest.mark.parametrize(
    ("first_seen", "last_seen", "join", "touch"),
    [
        (0.0, 900.0, False, False),  # a fresh repeat: nothing
        (0.0, 100.0, False, True),  # seen an hour or more ago: touched
        (500.0, 900.0, True, False),  # young origin, fresh: joins its notice only
        (500.0, 100.0, True, True),
    ],
)
def test_repeat_writes(first_seen: float, last_seen: float, join: bool, touch: bool) -> None:
    known = stored(first_seen=first_seen, last_seen=last_seen)
    assert repeat_writes(known, 1000.0, touch_after=600.0, coalesce_s=600.0) == (join, touch)
    assert fresh_repeat(known, 1000.0, 600.0, 600.0) == (not join and not touch)
    assert not fresh_repeat(None, 1000.0, 600.0, 600.0)


def test_the_bounds_of_the_rule() -> None:
    # exactly touch_after ago is touched; exactly the window ago is no longer young
    known = stored(first_seen=400.0, last_seen=400.0)
    assert repeat_writes(known, 1000.0, touch_after=600.0, coalesce_s=600.0) == (False, True)


# -- the plan ------------------------------------------------------------------------------------


def test_a_first_login_plans_every_row() -> None:
    outcomes, rows = plan_batch([op()], {"alice": []}, new_id=ids())
    (outcome,) = outcomes
    assert outcome.decision.reasons == (Reason.FIRST_USE,)
    assert (outcome.notice_id, outcome.wrote) == ("n1", True)
    assert rows.origins == [
        ("alice", JP.prefix, "JP", "AS64500", "JP Net", 1000.0, 1000.0, 1, None) + (None,) * 5
    ]
    assert rows.accounts == [("alice", 1000.0, 1000.0)]
    ((notice_id, account, created, reasons, payload, key),) = rows.notices
    assert (notice_id, account, created, json.loads(reasons), key) == (
        "n1",
        "alice",
        1000.0,
        ["first_use"],
        JP_KEY,
    )
    notice = notice_from_payload(payload)
    assert (notice.account, notice.protocols, notice.history) == ("alice", ("imap",), ())
    # first try after the hold, deadline from the login
    assert rows.deliveries == [("n1", "hook", "alice", 1030.0, 4600.0, 1000.0, 1000.0)]
    (decision,) = rows.decisions
    assert decision[0:3] == ("alice", 1000.0, "imap") and decision[8:] == (True, "", "n1")
    assert rows.failures == [] and rows.payloads == []


def test_a_fresh_repeat_plans_nothing_and_a_stale_one_a_touch() -> None:
    outcomes, rows = plan_batch([op(at=1000.0)], {"alice": [stored(last_seen=900.0)]})
    assert not outcomes[0].wrote and outcomes[0].notice_id is None
    assert rows.origins == rows.accounts == rows.notices == rows.decisions == []
    outcomes, rows = plan_batch([op(at=9000.0)], {"alice": [stored(last_seen=900.0)]})
    assert outcomes[0].wrote and outcomes[0].notice_id is None
    assert len(rows.origins) == 1 and rows.notices == [] and rows.decisions == []


def test_later_logins_of_a_batch_see_earlier_ones_and_the_inputs_stay() -> None:
    histories: dict[str, list[KnownOrigin]] = {"alice": []}
    batch: list[Op] = [op(at=1000.0 + i) for i in range(5)]
    batch.append(op(o=US, at=1010.0))
    batch.append(failure("alice", 1011.0))
    outcomes, rows = plan_batch(batch, histories, new_id=ids())
    assert [o.notice_id for o in outcomes] == ["n1", None, None, None, None, "n2", None]
    assert outcomes[5].decision.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    assert rows.failures == [(1011.0, "alice")]
    # the second notice's history snapshot holds the origin the first login added
    second = notice_from_payload(rows.notices[1][4])
    assert [h["prefix"] for h in second.history] == [JP.prefix]
    assert histories == {"alice": []}


def pending(
    id_: str, created: float, key: str = JP_KEY, protocols: Sequence[str] = ()
) -> PendingNotice:
    payload = {"id": id_, "protocol": "imap", "protocols": list(protocols) or ["imap"]}
    return PendingNotice(id_, "alice", key, created, json.dumps(payload))


def test_a_login_from_a_young_origin_joins_the_newest_pending_notice() -> None:
    young = stored(first_seen=900.0, last_seen=950.0, count=1)
    notices = {
        "alice": [
            pending("old", 300.0),  # older than the window
            pending("other", 950.0, key="other|origin|"),
            pending("older", 920.0),
            pending("newest", 950.0),
        ]
    }
    batch: list[Op] = [op(at=1000.0, protocol="smtp"), op(at=1001.0, protocol="smtp")]
    batch.append(op(at=1002.0, protocol="pop3"))
    outcomes, rows = plan_batch(batch, {"alice": [young]}, notices)
    # fresh repeats: nothing but the joined services
    assert not any(o.wrote for o in outcomes) and rows.origins == []
    ((payload, account, notice_id),) = rows.payloads
    assert (account, notice_id) == ("alice", "newest")
    assert json.loads(payload)["protocols"] == ["imap", "smtp", "pop3"]
    # the inputs are as they were
    assert json.loads(notices["alice"][3].payload)["protocols"] == ["imap"]


def test_a_service_already_named_writes_no_payload() -> None:
    young = stored(first_seen=900.0, last_seen=950.0, count=1)
    notices = {"alice": [pending("n", 950.0, protocols=["imap", "smtp"])]}
    _, rows = plan_batch([op(at=1000.0, protocol="smtp")], {"alice": [young]}, notices)
    assert rows.payloads == []


def test_a_login_joins_a_notice_created_earlier_in_its_batch() -> None:
    batch: list[Op] = [op(at=1000.0), op(at=1010.0, protocol="smtp", touch_after=0.0)]
    outcomes, rows = plan_batch(batch, {"alice": []}, {}, new_id=ids())
    assert [o.notice_id for o in outcomes] == ["n1", None]
    assert rows.payloads == []
    ((_, _, _, _, payload, key),) = rows.notices
    assert notice_from_payload(payload).protocols == ("imap", "smtp") and key == JP_KEY
    # a notice without deliveries is not waiting for anything: nothing joins it
    batch = [op(at=1000.0, channels=()), op(at=1010.0, protocol="smtp", touch_after=0.0)]
    _, rows = plan_batch(batch, {"alice": []}, {}, new_id=ids())
    assert notice_from_payload(rows.notices[0][4]).protocols == ("imap",)


def test_which_pending_notices_a_batch_reads() -> None:
    histories = {
        "young": [stored(first_seen=900.0)],
        "old": [stored(first_seen=0.0)],
        "new": [],
    }
    batch: list[Op] = [
        op("young", at=1000.0),
        op("old", at=1000.0),
        op("new", at=1100.0),
        op("new", at=1200.0),  # a second login: the first may add its origin
        op("nocoalesce", at=1000.0, coalesce_s=0.0),
        failure("young", 1000.0),
    ]
    assert prefetch_pending(batch, histories) == (["new", "young"], 400.0)
    assert prefetch_pending([op("old")], histories)[0] == []


def test_numbered_placeholders_skip_string_literals() -> None:
    pytest.importorskip("asyncpg")
    from policy_server.store.postgres import numbered

    sql = "SELECT '?' || ?, a FROM t WHERE b = ? AND c = 'it''s ?' AND d = ANY(?::text[])"
    assert numbered(sql) == (
        "SELECT '?' || $1, a FROM t WHERE b = $2 AND c = 'it''s ?' AND d = ANY($3::text[])"
    )
