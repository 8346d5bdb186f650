"""What an owner's answer to a notice does, and the alerts of a login from a blocked origin.

"It was me" records the answer: the notice's origin is confirmed. "It wasn't me" records it,
blocks the notice's origin for the account (``[response] block_scope`` and ``block_days``),
alerts every ``admin`` channel and runs ``[response] command`` with the notice and the block as
JSON on its standard input. The alert and the program run after the answer is stored, off the
owner's request: the owner's page answers at once, and neither can undo the block.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import Config
from ..delivery.breaker import AdminAlerts
from ..logs import RateLimitedLog
from ..model import Notice, Origin
from ..programs import ProgramError, run_program
from ..store.base import Answer, Answers, Block, BlockSource, BlockTarget, Feedback
from .blocks import BlockSet, target_of
from .metrics import Metrics

log = logging.getLogger("policy_server.response")
_limited = RateLimitedLog(log)

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Answered:
    """What an answer led to: the answer as stored (the first one, when the notice already
    had one: ``fresh`` is then False) and the block in force for the notice's origin."""

    feedback: Feedback
    fresh: bool
    block_until: float | None = None


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _origin_text(country: str | None, provider: str | None, as_org: str | None, prefix: str) -> str:
    who = provider or "provider unknown"
    if as_org and provider != f"org:{as_org}":
        who += f" ({as_org})"
    return f"{country or 'country unknown'}, {who}, prefix {prefix}"


class Responder:
    """Records owners' answers and carries out what they ask for."""

    def __init__(
        self,
        config: Config,
        answers: Answers,
        blocks: BlockSet,
        alerts: AdminAlerts,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._answers = answers
        self._blocks = blocks
        self._alerts = alerts
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def target(self, notice: Notice) -> BlockTarget:
        """What "It wasn't me" blocks for ``notice``."""
        return target_of(
            notice.prefix, notice.provider, notice.country, self._config.response.block_scope
        )

    def block_until(self, notice: Notice, now: float) -> float | None:
        """When the block of the notice's origin ends, if one is in force here."""
        until = (self._blocks.of(notice.account) or {}).get(self.target(notice))
        return until if until is not None and until > now else None

    async def answer(self, notice: Notice, answer: Answer, now: float | None = None) -> Answered:
        """Record the owner's ``answer`` to ``notice`` and act on it. Raises StoreError (the
        answer is then not recorded, and nothing was done)."""
        now = time.time() if now is None else now
        stored = await self._answers.record_answer(
            Feedback(
                notice_id=notice.id,
                account=notice.account,
                answer=answer,
                at=now,
                prefix=notice.prefix,
                country=notice.country or "",
                provider=notice.provider or "",
            )
        )
        fresh = stored.answer is answer and stored.at == now
        if not fresh:
            return Answered(stored, False, self.block_until(notice, now))
        if self._metrics is not None:
            self._metrics.answers.labels(answer.value).inc()
        log.info("notice %s of %s: the owner answered %s", notice.id, notice.account, answer)
        if answer is not Answer.DENIED:
            return Answered(stored, True)
        block = await self._blocks.add(
            Block(
                account=notice.account,
                target=self.target(notice),
                created=now,
                until=now + self._config.response.block_days * DAY_S,
                source=BlockSource.OWNER,
                notice_id=notice.id,
            ),
            now,
        )
        log.warning(
            "blocked %s for %s (the owner denied notice %s) until %s",
            block.target.describe(),
            notice.account,
            notice.id,
            _when(block.until),
        )
        self._spawn(self._after_denial(notice, block))
        return Answered(stored, True, block.until)

    async def _after_denial(self, notice: Notice, block: Block) -> None:
        origin = _origin_text(notice.country, notice.provider, notice.as_org, notice.prefix)
        await self._alerts.send(
            f"policy-server: {notice.account} says a login was not theirs",
            f'{notice.account} answered "It wasn\'t me" to notice {notice.id}.\n'
            f"The login: {_when(notice.time.timestamp())}, {'/'.join(notice.services)}"
            f" from {origin}.\n"
            f"Blocked for this account: {block.target.describe()} until {_when(block.until)}.\n"
            "Someone else may have the password: have it changed.\n"
            f"To lift the block: policy-server blocks clear {notice.account} {notice.prefix}",
        )
        command = self._config.response.command
        if not command:
            return
        document: dict[str, Any] = {
            **notice.payload_fields(),
            "account": notice.account,
            "answer": Answer.DENIED.value,
            "block": block.as_dict(),
        }
        data = json.dumps(document, ensure_ascii=False).encode("utf-8") + b"\n"
        label = f"[response] command {command[0]}"
        try:
            exited = await run_program(command, data, self._config.response.command_timeout_s)
        except ProgramError as exc:
            log.error("%s for notice %s: %s", label, notice.id, exc)
            return
        if exited.code != 0:
            log.error(
                "%s for notice %s: exit status %d%s",
                label,
                notice.id,
                exited.code,
                f": {exited.stderr}" if exited.stderr else "",
            )
        else:
            log.info("%s for notice %s: done", label, notice.id)

    def blocked_login(
        self, account: str, origin: Origin, target: BlockTarget, notice_id: str | None
    ) -> None:
        """A successful login from a blocked origin was reported (the recorder tells at most
        once an hour per account and block): alert the operators."""
        if self._metrics is not None:
            self._metrics.blocked_logins.inc()
        where = _origin_text(origin.country, origin.provider, origin.as_org, origin.prefix)
        log.warning("a login of %s succeeded from a blocked origin: %s", account, where)
        self._spawn(
            self._alert(
                f"policy-server: {account} logged in from a blocked origin",
                f"A login of {account} succeeded from {where}, which is blocked for this"
                f" account ({target.describe()}).\n"
                "Dovecot does not check the policy before the password"
                " (auth_policy_check_before_auth = no), so the block could not refuse it.\n"
                + (f"The owner's notice: {notice_id}\n" if notice_id else "")
                + "Someone else may have the password: have it changed.",
            )
        )

    def hijacked(self, account: str, spread: Sequence[str], notice_id: str | None) -> None:
        """An account succeeded from many providers or countries within ``[compromise]
        window_s`` (the store says so once a day per account): alert the operators."""
        if self._metrics is not None:
            self._metrics.hijack_alerts.inc()
        log.warning(
            "%s logged in from %d providers or countries within the window: %s",
            account,
            len(spread),
            ", ".join(spread),
        )
        self._spawn(
            self._alert(
                f"policy-server: {account} logged in from {len(spread)} places at once",
                f"Logins of {account} succeeded within the last hour from:\n"
                + "".join(f"  {where}\n" for where in spread)
                + "This is the pattern of stolen credentials used by many machines at once"
                " (spam sent through SMTP AUTH, for instance).\n"
                + (f"The owner's notice: {notice_id}\n" if notice_id else "")
                + "Check the account's outgoing mail and have the password changed.",
            )
        )

    async def _alert(self, subject: str, body: str) -> None:
        await self._alerts.send(subject, body)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name="owner-response")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _limited.log(
                logging.ERROR,
                "response",
                "an owner's response failed: %r",
                task.exception(),
            )

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the alerts and programs in flight (at shutdown), at most ``timeout_s``."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
