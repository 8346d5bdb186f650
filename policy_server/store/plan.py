"""The plan of one login batch, as a pure function: the decisions, and the rows to write.

The writer reads, inside the batch's transaction, the histories of the batch's accounts and the
notices of theirs that are still pending (``prefetch_pending`` says whose); ``plan_batch``
decides every login of the batch in order against those rows, with no I/O, and returns the
outcomes and every row the transaction then writes. The rows of a notice, a login, its origin
and its payload are made here, for every backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .. import jsonfast
from ..client import Client
from ..model import (
    NO_SETTINGS,
    AccountSettings,
    History,
    KnownOrigin,
    Location,
    Notice,
    Reason,
    Travel,
)
from ..policy import KNOWN, URGENT, Decision, repeat_writes
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
    # (account, prefix, country, provider) of origins a newer prefix of their provider replaces
    evictions: list[tuple[Any, ...]] = field(default_factory=list)
    # (account, alerted_at, updated) of accounts the hijack pattern alerted about
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    failures: list[tuple[Any, ...]] = field(default_factory=list)
    notices: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    # (payload, account, id) of stored notices that a login of the batch joined
    payloads: list[tuple[Any, ...]] = field(default_factory=list)


def origin_key(prefix: str, country: str | None, provider: str | None) -> str:
    return f"{prefix}|{country or ''}|{provider or ''}"


#: the mail programs an origin row keeps, the most recent last
CLIENTS_PER_ORIGIN = 8


def known_origin(row: Sequence[Any]) -> KnownOrigin:
    """A stored origin from its row (prefix, country, provider, as_org, first and last seen,
    count, network, clients, latitude, longitude, radius_km, confirmed: ``ORIGIN_COLUMNS``);
    unknown country and provider are stored as ''."""
    latitude, longitude = row[9], row[10]
    return KnownOrigin(
        prefix=row[0],
        country=row[1] or None,
        provider=row[2] or None,
        as_org=row[3],
        first_seen=row[4],
        last_seen=row[5],
        count=row[6],
        network=row[7],
        clients=tuple(jsonfast.loads(row[8])) if row[8] else (),
        location=None
        if latitude is None or longitude is None
        else Location(float(latitude), float(longitude), float(row[11] or 0.0)),
        confirmed=row[12],
    )


def account_settings(row: Sequence[Any]) -> AccountSettings:
    """An account's settings from its row (notices, trip_country, trip_until, alerted_at)."""
    return AccountSettings(
        notices=bool(row[0]), trip_country=row[1], trip_until=row[2], alerted_at=row[3]
    )


def _dumps(value: Any) -> str:
    return jsonfast.dumps_text(value)


def notice_from_payload(payload: str) -> Notice:
    data = jsonfast.loads(payload)
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
        travel=Travel.from_payload(data.get("travel")),
        spread=tuple(data.get("origins") or ()),
    )


def notice_payload(notice: Notice, identities: frozenset[str] = frozenset()) -> str:
    """The stored form of a notice: the contract's fields, and what only the store needs (the
    account, the prefix, the history the decision saw, the provider's names for coalescing)."""
    data = notice.payload_fields()
    data.update(account=notice.account, prefix=notice.prefix, history=list(notice.history))
    if identities:
        data["identities"] = sorted(identities)
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
    # the payload with what later logins added to it (None: nothing, it is not rewritten)
    joined: dict[str, Any] | None = None
    _data: dict[str, Any] | None = field(default=None, repr=False)

    def data(self) -> dict[str, Any]:
        """The payload, parsed once (changed in place by ``join``)."""
        if self._data is None:
            self._data = jsonfast.loads(self.payload)
        return self._data

    def same_place(self, country: str | None, decision: Decision, client: Client | None) -> bool:
        """Whether a notifying login from ``country`` is about the place of this notice: the
        same country, and the same provider (by any of its names) or the same mail program
        (an IPv6 and an IPv4 login of one dual-stack network, often in two ASNs of a carrier).
        A notice of an urgent reason takes no other login in."""
        data = self.data()
        if country is None or data.get("country") != country:
            return False
        if any(Reason(r) in URGENT for r in data.get("reasons", ())):
            return False
        if decision.identities & set(data.get("identities", ())):
            return True
        program = data.get("client") or {}
        return client is not None and program.get("name") == client.name

    def join(self, protocol: str) -> None:
        """Name ``protocol`` among the notice's services, unless it is there already."""
        data = self.data()
        protocols = list(data.get("protocols") or [data["protocol"]])
        if protocol and protocol not in protocols:
            data["protocols"] = [*protocols, protocol]
            self.joined = data


def _programs(known: KnownOrigin | None, client: Client | None) -> tuple[str, ...]:
    """An origin's mail programs once ``client`` logged in from it (the most recent last)."""
    names = list(known.clients) if known is not None else []
    if client is not None:
        if client.name in names:
            names.remove(client.name)
        names.append(client.name)
    return tuple(names[-CLIENTS_PER_ORIGIN:])


def _stored(login: SuccessfulLogin, existing: KnownOrigin | None) -> KnownOrigin:
    """The origin row as it is after ``login`` (a new row when ``existing`` is None)."""
    origin = login.origin
    if existing is None:
        return KnownOrigin(
            prefix=origin.prefix,
            country=origin.country,
            provider=origin.provider,
            as_org=origin.as_org,
            first_seen=login.at,
            last_seen=login.at,
            count=1,
            network=origin.network,
            clients=_programs(None, login.client),
            location=origin.location,
        )
    return KnownOrigin(
        prefix=existing.prefix,
        country=existing.country,
        provider=existing.provider,
        as_org=origin.as_org or existing.as_org,
        first_seen=min(existing.first_seen, login.at),
        last_seen=max(existing.last_seen, login.at),
        count=existing.count + 1,
        network=existing.network or origin.network,
        clients=_programs(existing, login.client),
        location=origin.location or existing.location,
        confirmed=existing.confirmed,
    )


def _inherit(new: KnownOrigin, old: KnownOrigin) -> KnownOrigin:
    """A new prefix's row taking over the row it replaces: its first use, its logins, its
    programs and its confirmation."""
    programs = [name for name in old.clients if name not in new.clients] + list(new.clients)
    return KnownOrigin(
        prefix=new.prefix,
        country=new.country,
        provider=new.provider,
        as_org=new.as_org or old.as_org,
        first_seen=min(new.first_seen, old.first_seen),
        last_seen=new.last_seen,
        count=new.count + old.count,
        network=new.network or old.network,
        clients=tuple(programs[-CLIENTS_PER_ORIGIN:]),
        location=new.location or old.location,
        confirmed=new.confirmed if new.confirmed is not None else old.confirmed,
    )


def _origin_row(account: str, row: KnownOrigin, delta: int, inherited: bool) -> tuple[Any, ...]:
    """The UPSERT_ORIGIN parameters writing ``row``: ``delta`` logins more; an inherited row
    writes its first use and confirmation too."""
    place = row.location
    return (
        account,
        row.prefix,
        row.country or "",
        row.provider or "",
        row.as_org,
        row.first_seen if inherited else row.last_seen,
        row.last_seen,
        row.count if inherited else delta,
        row.network,
        _dumps(list(row.clients)) if row.clients else None,
        place.latitude if place else None,
        place.longitude if place else None,
        place.radius_km if place else None,
        row.confirmed if inherited else None,
    )


def _new_id() -> str:
    return str(uuid.uuid4())


def _same_group(a: KnownOrigin, b: KnownOrigin) -> bool:
    return a.country == b.country and a.provider == b.provider


def plan_batch(
    batch: Sequence[Op],
    histories: Mapping[str, Sequence[KnownOrigin]],
    pending: Mapping[str, Sequence[PendingNotice]] | None = None,
    new_id: Callable[[], str] = _new_id,
    settings: Mapping[str, AccountSettings] | None = None,
    keep: int = 0,
) -> tuple[list[Outcome], BatchRows]:
    """Decide every login of ``batch`` in order and collect the rows to write.

    ``histories`` holds the stored origins of the batch's accounts, ``pending`` their notices
    not delivered yet (at least those ``prefetch_pending`` names) and ``settings`` their
    settings, all read inside the batch's transaction. None is changed: a later login of an
    account sees an earlier one of the same batch in the plan's own copy. A login from a young
    origin joins the newest waiting notice about it, stored or created by the batch; a
    notifying login joins a waiting notice about the same place (``_Waiting.same_place``).
    With ``keep``, an account holds at most that many prefixes per provider and country: a new
    one replaces the least recently seen (``_inherit``).
    """
    results: list[Outcome] = []
    rows = BatchRows()
    known_by: dict[str, list[KnownOrigin]] = {a: list(h) for a, h in histories.items()}
    settings_by: dict[str, AccountSettings] = dict(settings or {})
    waiting: dict[str, list[_Waiting]] = {
        account: [_Waiting(n.id, n.origin_key, n.created, n.payload) for n in notices]
        for account, notices in (pending or {}).items()
    }
    # (account, origin key) -> its rows in rows.origins, for an eviction to take back
    written: dict[tuple[str, str], list[int]] = {}
    for op in batch:
        if isinstance(op, FailureOp):
            rows.failures.append((op.at, op.account))
            results.append(Outcome(decision=KNOWN, wrote=True))
            continue
        login = op.login
        origin = login.origin
        known = known_by.setdefault(login.account, [])
        mine = settings_by.get(login.account, NO_SETTINGS)
        history = History(login.account, tuple(known), mine)
        decision = op.decide(history, origin, login.at, login.client)
        existing = history.find(origin)
        key = origin_key(origin.prefix, origin.country, origin.provider)
        if existing is not None and not decision.unusual:
            join_pending, touch = repeat_writes(
                existing, login.at, op.touch_after, op.coalesce_s, login.client
            )
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
        row: KnownOrigin = _stored(login, existing)
        inherited = False
        if existing is not None:
            known.remove(existing)
        elif keep:
            group = [k for k in known if _same_group(k, row)]
            if len(group) >= keep:
                old = min(group, key=lambda k: k.last_seen)
                known.remove(old)
                row, inherited = _inherit(row, old), True
                old_key = (login.account, origin_key(old.prefix, old.country, old.provider))
                for index in written.pop(old_key, ()):
                    rows.origins[index] = ()
                rows.evictions.append(
                    (login.account, old.prefix, old.country or "", old.provider or "")
                )
        known.append(row)
        written.setdefault((login.account, key), []).append(len(rows.origins))
        rows.origins.append(_origin_row(login.account, row, 1, inherited))
        rows.accounts.append((login.account, login.at, login.at))
        if Reason.MANY_ORIGINS in decision.reasons:
            settings_by[login.account] = replace(mine, alerted_at=login.at)
            rows.alerts.append((login.account, login.at, login.at))
        notice_id: str | None = None
        joined: _Waiting | None = None
        if decision.notify and not decision.urgent and op.coalesce_s > 0:
            since = login.at - op.coalesce_s
            same = [
                w
                for w in waiting.get(login.account, ())
                if w.created >= since and w.same_place(origin.country, decision, login.client)
            ]
            if same:
                joined = max(same, key=lambda w: w.created)
                joined.join(login.protocol)
        if decision.notify and joined is None:
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
                travel=decision.travel,
                spread=decision.spread,
            )
            notice_id = notice.id
            payload = notice_payload(notice, decision.identities)
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
                    _dumps([r.value for r in notice.reasons]),
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
            note = decision.note
            if joined is not None:
                note = "joined the notice of the same place"
            rows.decisions.append(
                (
                    login.account,
                    login.at,
                    login.protocol,
                    origin.prefix,
                    origin.country,
                    origin.provider,
                    origin.network,
                    _dumps([r.value for r in decision.reasons]),
                    notice_id is not None,
                    note,
                    notice_id if joined is None else joined.id,
                )
            )
        results.append(Outcome(decision=decision, notice_id=notice_id, wrote=True))
    rows.origins = [row for row in rows.origins if row]
    for account, notices in waiting.items():
        for w in notices:
            if w.joined is None:
                continue
            payload = _dumps(w.joined)
            if w.row is None:
                rows.payloads.append((payload, account, w.id))
            else:
                stored = rows.notices[w.row]
                rows.notices[w.row] = (*stored[:4], payload, stored[5])
    return results, rows
