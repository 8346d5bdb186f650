"""Group commit: the queue of login writes and the writer task that commits them in batches.

Concurrent logins are committed together: the writer takes every operation waiting in its
queue, waits at most ``group_commit_wait_ms`` for more (up to ``group_commit_max_batch``), and
applies them in one transaction, so durability costs one commit per batch, not one per login.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from ..config import StorageConfig
from .base import Decide, Outcome, Overloaded, StoreError, SuccessfulLogin
from .plan import FailureOp, Op, RecordOp

log = logging.getLogger("policy_server.store")


class GroupCommit:
    """The login path's writes through one writer task per process.

    A store mixes this in, sets ``_config``, and provides ``_apply_batch`` (one transaction for
    the batch) and ``_quiet`` (errors that fail the batch's logins without a traceback in the
    log: the database's own, which the caller gets as StoreError anyway).
    """

    _config: StorageConfig

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Op] = asyncio.Queue(self._config.max_pending_writes)
        self._writer_task: asyncio.Task[None] | None = None
        #: login transactions committed, and logins they carried (group-commit efficiency)
        self.commits = 0
        self.committed_ops = 0

    async def _apply_batch(self, batch: list[Op]) -> list[Outcome]:
        raise NotImplementedError

    def _quiet(self, exc: BaseException) -> bool:
        return isinstance(exc, StoreError)

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
        try:
            self._queue.put_nowait(op)
        except asyncio.QueueFull:
            raise Overloaded(
                f"{self._queue.maxsize} writes already waiting (max_pending_writes)"
            ) from None

    def _start_writer(self, name: str) -> None:
        self._writer_task = asyncio.create_task(self._write_loop(), name=name)
        self._writer_task.add_done_callback(_writer_ended)

    def writer_problem(self) -> str:
        """Why logins cannot be written ("" while the writer runs), for /readyz."""
        task = self._writer_task
        if task is None:
            return "store is not open"
        if not task.done():
            return ""
        if task.cancelled():
            return "group-commit writer stopped"
        return f"group-commit writer died: {type(task.exception()).__name__}: {task.exception()}"

    async def _stop_writer(self) -> None:
        """Let queued logins commit (5 s at most), then stop the writer."""
        if self._writer_task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=5)
        self._writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer_task
        self._writer_task = None

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
            if not self._quiet(exc):
                log.exception("write batch failed unexpectedly")
            error = StoreError(f"write failed: {exc}")
            for op in live:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        self.commits += 1
        self.committed_ops += len(live)
        for op, outcome in zip(live, results, strict=True):
            if not op.future.done():
                op.future.set_result(outcome)

    def _fail_queued(self) -> None:
        """After close: every login still queued gets an error, none waits forever."""
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if not op.future.done():
                op.future.set_exception(StoreError("store closed"))


def _writer_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # every report now fails open: as loud as it gets (and /readyz answers 503)
        log.critical("group-commit writer died", exc_info=task.exception())
