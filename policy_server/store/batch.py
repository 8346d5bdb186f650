"""What every store backend shares about writing logins: the group-commit queue, and the plan
of one batch (decisions made against the history read inside the batch's transaction, and the
rows to write for them). The backends differ only in SQL and in how they lock and read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..config import StorageConfig
from ..model import History, KnownOrigin, Notice, Reason
from ..policy import KNOWN
from .base import Decide, Outcome, StoreError, SuccessfulLogin, origin_snapshot

log = logging.getLogger("policy_server.store")

# last_error of a delivery an operator released from hold starts with this
RELEASED = "released"


@dataclass(slots=True)
class RecordOp:
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
    account: str
    at: float
    future: asyncio.Future[Outcome] = field(repr=False)


Op = RecordOp | FailureOp


def origin_key(prefix: str, country: str | None, provider: str | None) -> str:
    return f"{prefix}|{country or ''}|{provider or ''}"


def known_origin(row: Sequence[Any]) -> KnownOrigin:
    return KnownOrigin(
        prefix=row[0],
        country=row[1] or None,
        provider=row[2] or None,
        as_org=row[3],
        first_seen=row[4],
        last_seen=row[5],
        count=row[6],
    )


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
    )


def notice_payload(notice: Notice) -> str:
    data = notice.payload_fields()
    data.update(account=notice.account, prefix=notice.prefix, history=list(notice.history))
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def remember(
    known: list[KnownOrigin], existing: KnownOrigin | None, login: SuccessfulLogin
) -> None:
    """Apply a recorded login to the batch's in-memory history, for later logins of the batch."""
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
            )
        )


@dataclass
class BatchRows:
    """The rows one batch writes, each list for one statement, in the backends' column order."""

    origins: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    failures: list[tuple[Any, ...]] = field(default_factory=list)
    notices: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)


JoinPending = Callable[[SuccessfulLogin, str, float], Awaitable[None]]


async def plan_batch(
    batch: Sequence[Op], histories: dict[str, list[KnownOrigin]], join_pending: JoinPending
) -> tuple[list[Outcome], BatchRows]:
    """Decide every login of ``batch`` in order and collect the rows to write.

    ``histories`` holds the stored origins of the batch's accounts, read inside the batch's
    transaction; it is updated as the batch goes, so a later login of the same account sees an
    earlier one. ``join_pending`` names a login's service in the pending notice of its origin.
    """
    results: list[Outcome] = []
    rows = BatchRows()
    for op in batch:
        if isinstance(op, FailureOp):
            rows.failures.append((op.at, op.account))
            results.append(Outcome(decision=KNOWN, wrote=True))
            continue
        login = op.login
        known = histories[login.account]
        history = History(login.account, tuple(known))
        decision = op.decide(history, login.origin, login.at)
        existing = history.find(login.origin)
        origin = login.origin
        key = origin_key(origin.prefix, origin.country, origin.provider)
        if (
            existing is not None
            and not decision.unusual
            and login.at - existing.first_seen < op.coalesce_s
        ):
            await join_pending(login, key, login.at - op.coalesce_s)
        if (
            existing is not None
            and not decision.unusual
            and login.at - existing.last_seen < op.touch_after
        ):
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
            )
        )
        rows.accounts.append((login.account, login.at, login.at))
        remember(known, existing, login)
        notice_id: str | None = None
        if decision.notify:
            notice = Notice(
                id=str(uuid.uuid4()),
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
            )
            notice_id = notice.id
            rows.notices.append(
                (
                    notice.id,
                    login.account,
                    login.at,
                    json.dumps([r.value for r in notice.reasons]),
                    notice_payload(notice),
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
    return results, rows


class GroupCommit:
    """The queue of login writes and the writer task that commits them in batches.

    A store mixes this in, sets ``_config``, ``_queue`` and ``_writer_task``, and provides
    ``_apply_batch`` (one transaction for the batch). Errors of the kinds in ``_quiet_errors``
    fail the batch's logins quietly; anything else is logged with its traceback too.
    """

    _config: StorageConfig
    _queue: asyncio.Queue[Op]
    _writer_task: asyncio.Task[None] | None
    _quiet_errors: tuple[type[BaseException], ...] = (StoreError,)

    async def _apply_batch(self, batch: list[Op]) -> list[Outcome]:
        raise NotImplementedError

    async def record_success(
        self,
        login: SuccessfulLogin,
        decide: Decide,
        channels: Sequence[str],
        *,
        touch_after: float,
        deadline_s: float,
        hold_s: float = 0.0,
        coalesce_s: float = 0.0,
    ) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._submit(
            RecordOp(login, decide, channels, touch_after, deadline_s, hold_s, coalesce_s, future)
        )
        return await future

    async def record_failure(self, account: str, at: float) -> None:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._submit(FailureOp(account, at, future))
        await future

    def _submit(self, op: Op) -> None:
        if self._writer_task is None or self._writer_task.done():
            raise StoreError("store is not open")
        self._queue.put_nowait(op)

    async def _next_batch(self) -> list[Op]:
        batch = [await self._queue.get()]
        limit = self._config.group_commit_max_batch
        wait = self._config.group_commit_wait_ms / 1000
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while len(batch) < limit:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = until - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _write_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._commit_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit_batch(self, batch: list[Op]) -> None:
        live = [op for op in batch if not op.future.done()]
        if not live:
            return
        try:
            results = await self._apply_batch(live)
        except Exception as exc:
            # whatever went wrong (a database error, a bug in a decision), the logins waiting
            # on this batch get an answer and the writer task lives on
            if not isinstance(exc, self._quiet_errors):
                log.exception("write batch failed unexpectedly")
            error = StoreError(f"write failed: {exc}")
            for op in live:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        for op, outcome in zip(live, results, strict=True):
            if not op.future.done():
                op.future.set_result(outcome)

    def _fail_queued(self) -> None:
        """After close: every login still queued gets an error, none waits forever."""
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if not op.future.done():
                op.future.set_exception(StoreError("store closed"))
