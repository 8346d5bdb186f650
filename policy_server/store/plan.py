"""The plan of one login batch, as a pure function: the decisions, and the rows to write.

The writer reads, inside the batch's transaction, the histories of the batch's accounts and the
notices of theirs that are still pending (``prefetch_pending`` says whose); ``plan_batch``
decides every login of the batch in order against those rows, with no I/O, and returns the
outcomes and every row the transaction then writes. The rows of a notice, a login, its origin
and its payload are made here, for every backend.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..client import Client
from ..model import History, KnownOrigin, Notice, Reason
from ..policy import KNOWN, repeat_writes
from .base import Decide, Outcome, SuccessfulLogin, origin_snapshot


@dataclass(slots=True)
class RecordOp:
    """A successful login waiting for the writer (see ``LoginStore.record_success``)."""

    login: SuccessfulLogin
    decide: Decide
    channels: Sequence[str]
    touch_after: float
    deadline_s: float
    hold_s: float
    coalesce_s: float
    future: asyncio.Future[Outcome] = field(repr=False)


@dataclass(slots=True)
class FailureOp:
    """A failed login waiting for the writer."""

    account: str
    at: float
    future: asyncio.Future[Outcome] = field(repr=False)


Op = RecordOp | FailureOp


@dataclass(frozen=True, slots=True)
class PendingNotice:
    """A stored notice that some channel has not delivered yet, as the batch read it."""

    id: str
    account: str
    origin_key: str
    created: float
    payload: str


@dataclass
class BatchRows:
    """The rows one batch writes, each list for one statement, in the statements' column order
    (see ``store/sql.py``)."""

    origins: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    failures: list[tuple[Any, ...]] = field(default_factory=list)
    notices: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    # (payload, account, id) of stored notices that a login of the batch joined
    payloads: list[tuple[Any, ...]] = field(default_factory=list)


def origin_key(prefix: str, country: str | None, provider: str | None) -> str:
    return f"{prefix}|{country or ''}|{provider or ''}"


def known_origin(row: Sequence[Any]) -> KnownOrigin:
    """A stored origin from its row (prefix, country, provider, as_org, first and last seen,
    count, network); unknown country and provider are stored as ''."""
    return KnownOrigin(
        prefix=row[0],
        country=row[1] or None,
        provider=row[2] or None,
        as_org=row[3],
        first_seen=row[4],
        last_seen=row[5],
        count=row[6],
        network=row[7],
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def notice_from_payload(payload: str) -> Notice:
    data = json.loads(payload)
    return Notice(
        id=data["id"],
        account=data["account"],
        login=data["login"],
        reasons=tuple(Reason(r) for r in data["reasons"]),
        protocol=data["protocol"],
        remote=data["remote"],
        time=datetime.fromisoformat(data["time"]),
        country=data["country"],
        asn=data["asn"],
        as_org=data["as_org"],
        prefix=data["prefix"],
        history=tuple(data.get("history", ())),
        protocols=tuple(data.get("protocols", ())),
        network=data.get("network"),
        network_label=data.get("network_label"),
        client=Client.from_payload(data.get("client")),
    )


def notice_payload(notice: Notice) -> str:
    data = notice.payload_fields()
    data.update(account=notice.account, prefix=notice.prefix, history=list(notice.history))
    return _dumps(data)


def prefetch_pending(
    batch: Sequence[Op], histories: Mapping[str, Sequence[KnownOrigin]]
) -> tuple[list[str], float]:
    """The accounts whose pending notices the plan may need, and since when (created).

    Only a login from an origin younger than its coalescing window joins a notice: an account
    needs its pending notices read when one of its stored origins is that young, or when the
    batch has several of its logins (an earlier one may add the origin a later one is from).
    """
    ops: dict[str, list[RecordOp]] = {}
    for op in batch:
        if isinstance(op, RecordOp) and op.coalesce_s > 0:
            ops.setdefault(op.login.account, []).append(op)
    wanted: list[str] = []
    since = float("inf")
    for account, mine in ops.items():
        young = len(mine) > 1 or any(
            op.login.at - known.first_seen < op.coalesce_s
            for op in mine
            for known in histories.get(account, ())
        )
        if young:
            wanted.append(account)
            since = min(since, *(op.login.at - op.coalesce_s for op in mine))
    return sorted(wanted), since


@dataclass(slots=True)
class _Waiting:
    """A notice a later login of the batch may join: a stored pending one, or one the batch
    creates (``row`` is then its index in ``BatchRows.notices``)."""

    id: str
    origin_key: str
    created: float
    payload: str
    row: int | None = None
    joined: dict[str, Any] | None = None

    def join(self, protocol: str) -> None:
        """Name ``protocol`` among the notice's services, unless it is there already."""
        data = self.joined if self.joined is not None else json.loads(self.payload)
        protocols = list(data.get("protocols") or [data["protocol"]])
        if protocol and protocol not in protocols:
            data["protocols"] = [*protocols, protocol]
            self.joined = data


def _remember(
    known: list[KnownOrigin], existing: KnownOrigin | None, login: SuccessfulLogin
) -> None:
    """Apply a recorded login to the batch's history, for later logins of the batch."""
    origin = login.origin
    if existing is not None:
        known.remove(existing)
        known.append(
            KnownOrigin(
                prefix=existing.prefix,
                country=existing.country,
                provider=existing.provider,
                as_org=origin.as_org or existing.as_org,
                first_seen=existing.first_seen,
                last_seen=max(existing.last_seen, login.at),
                count=existing.count + 1,
                network=existing.network or origin.network,
            )
        )
    else:
        known.append(
            KnownOrigin(
                prefix=origin.prefix,
                country=origin.country,
                provider=origin.provider,
                as_org=origin.as_org,
                first_seen=login.at,
                last_seen=login.at,
                count=1,
                network=origin.network,
            )
        )


def _new_id() -> str:
    return str(uuid.uuid4())


def plan_batch(
    batch: Sequence[Op],
    histories: Mapping[str, Sequence[KnownOrigin]],
    pending: Mapping[str, Sequence[PendingNotice]] | None = None,
    new_id: Callable[[], str] = _new_id,
) -> tuple[list[Outcome], BatchRows]:
    """Decide every login of ``batch`` in order and collect the rows to write.

    ``histories`` holds the stored origins of the batch's accounts and ``pending`` their
    notices not delivered yet (at least those ``prefetch_pending`` names), both read inside
    the batch's transaction. Neither is changed: a later login of an account sees an earlier
    one of the same batch in the plan's own copy. A login from a young origin joins the newest
    waiting notice about it, stored or created by the batch.
    """
    results: list[Outcome] = []
    rows = BatchRows()
    known_by: dict[str, list[KnownOrigin]] = {a: list(h) for a, h in histories.items()}
    waiting: dict[str, list[_Waiting]] = {
        account: [_Waiting(n.id, n.origin_key, n.created, n.payload) for n in notices]
        for account, notices in (pending or {}).items()
    }
    for op in batch:
        if isinstance(op, FailureOp):
            rows.failures.append((op.at, op.account))
            results.append(Outcome(decision=KNOWN, wrote=True))
            continue
        login = op.login
        origin = login.origin
        known = known_by.setdefault(login.account, [])
        history = History(login.account, tuple(known))
        decision = op.decide(history, origin, login.at)
        existing = history.find(origin)
        key = origin_key(origin.prefix, origin.country, origin.provider)
        if existing is not None and not decision.unusual:
            join_pending, touch = repeat_writes(existing, login.at, op.touch_after, op.coalesce_s)
            if join_pending:
                since = login.at - op.coalesce_s
                candidates = [
                    w
                    for w in waiting.get(login.account, ())
                    if w.origin_key == key and w.created >= since
                ]
                if candidates:
                    max(candidates, key=lambda w: w.created).join(login.protocol)
            if not touch:
                results.append(Outcome(decision=decision))
                continue
        rows.origins.append(
            (
                login.account,
                origin.prefix,
                origin.country or "",
                origin.provider or "",
                origin.as_org,
                login.at,
                login.at,
                origin.network,
            )
        )
        rows.accounts.append((login.account, login.at, login.at))
        _remember(known, existing, login)
        notice_id: str | None = None
        if decision.notify:
            notice = Notice(
                id=new_id(),
                account=login.account,
                login=login.login,
                reasons=decision.notify,
                protocol=login.protocol,
                remote=login.remote,
                time=datetime.fromtimestamp(login.at, UTC),
                country=origin.country,
                asn=origin.asn,
                as_org=origin.as_org,
                prefix=origin.prefix,
                history=tuple(origin_snapshot(k) for k in history.origins),
                protocols=(login.protocol,),
                network=origin.network,
                network_label=origin.network_label,
                client=login.client,
            )
            notice_id = notice.id
            payload = notice_payload(notice)
            if op.channels:
                # pending from now on: a later login of the batch from its origin joins it
                waiting.setdefault(login.account, []).append(
                    _Waiting(notice.id, key, login.at, payload, row=len(rows.notices))
                )
            rows.notices.append(
                (
                    notice.id,
                    login.account,
                    login.at,
                    json.dumps([r.value for r in notice.reasons]),
                    payload,
                    key,
                )
            )
            deadline = login.at + op.deadline_s
            first_try = login.at + op.hold_s
            for channel in op.channels:
                rows.deliveries.append(
                    (notice.id, channel, login.account, first_try, deadline, login.at, login.at)
                )
        if decision.reasons or (decision.note and existing is None):
            rows.decisions.append(
                (
                    login.account,
                    login.at,
                    login.protocol,
                    origin.prefix,
                    origin.country,
                    origin.provider,
                    origin.network,
                    json.dumps([r.value for r in decision.reasons]),
                    notice_id is not None,
                    decision.note,
                    notice_id,
                )
            )
        results.append(Outcome(decision=decision, notice_id=notice_id, wrote=True))
    for account, notices in waiting.items():
        for w in notices:
            if w.joined is None:
                continue
            payload = _dumps(w.joined)
            if w.row is None:
                rows.payloads.append((payload, account, w.id))
            else:
                row = rows.notices[w.row]
                rows.notices[w.row] = (*row[:4], payload, row[5])
    return results, rows
