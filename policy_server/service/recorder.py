"""The request path of a report: origin, history, decision, and the committed record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..accounts import is_exempt, normalize_login
from ..client import Client, parse_client_id
from ..config import Config
from ..events import Event, EventWriter
from ..model import History, KnownOrigin, LoginEvent, Origin, Reason
from ..origin.resolver import OriginResolver
from ..policy import KNOWN, decide, exempted, fresh_repeat, from_blocked
from ..store.base import (
    BlockTarget,
    Decide,
    ImmediateHistory,
    LoginStore,
    Outcome,
    Overloaded,
    SuccessfulLogin,
)
from .history_cache import HistoryCache

log = logging.getLogger("policy_server.recorder")

#: a login from a blocked origin makes a notice at most this often per account and block
BLOCKED_NOTICE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Prepared:
    """A report ``begin`` could not answer: the account, its origin (None: a failed login)."""

    account: str
    origin: Origin | None
    at: float
    # the history ``begin`` already read, when the store reads without waiting
    history: History | None = None
    # the account's block the origin is in (a login that should have been refused)
    blocked: BlockTarget | None = None
    # the mail program the login's IMAP ID names
    client: Client | None = None


class BlockedOrigins(Protocol):
    """Which account's origins are blocked (the in-memory set of the allow path)."""

    def refusing(self, account: str, origin: Origin, now: float) -> BlockTarget | None: ...


def _client(event: LoginEvent) -> Client | None:
    """The mail program the login's IMAP ID names, if any."""
    return parse_client_id(event.device_id) if event.device_id else None


class LoginRecorder:
    """Turns reports into history and queued notices.

    A repeat login from a known origin seen less than ``touch_granularity_s`` ago costs one
    indexed read and no write; everything else goes through the store's group commit, which
    decides again against the history inside the transaction.
    """

    def __init__(
        self,
        config: Config,
        store: LoginStore,
        resolver: Callable[[], OriginResolver],
        channels: Sequence[str],
        on_notice: Callable[[], None] = lambda: None,
        events: EventWriter | None = None,
        on_origin: Callable[[Origin], None] = lambda origin: None,
        blocks: BlockedOrigins | None = None,
        on_blocked: Callable[[str, Origin, BlockTarget, str | None], None] = (
            lambda account, origin, target, notice_id: None
        ),
        on_hijack: Callable[[str, Sequence[str], str | None], None] = (
            lambda account, spread, notice_id: None
        ),
        history_version: Callable[[], Hashable] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        # a store that reads a history without waiting answers fresh repeats in ``begin``
        self._immediate = store if isinstance(store, ImmediateHistory) else None
        self._resolver = resolver
        self._channels = tuple(channels)
        self._on_notice = on_notice
        self.events = events
        self._on_origin = on_origin
        self._blocks = blocks
        self._on_blocked = on_blocked
        self._on_hijack = on_hijack
        # (account, block) -> when a login from it last made a notice
        self._blocked_seen: dict[tuple[str, BlockTarget], float] = {}
        #: reports in ``finish`` (reading a history or waiting for their commit)
        self.pending = 0
        self._max_pending = config.storage.max_pending_writes
        policy, compromise = config.policy, config.compromise
        self._decide: Decide = lambda history, origin, at, client: decide(
            history, origin, at, policy, client, compromise
        )
        # the histories of recently seen accounts; void when ``history_version`` changes (by
        # default: when this store forgets an account)
        self.histories = HistoryCache(
            config.storage.history_cache, history_version or (lambda: store.forgotten)
        )

    def origin(self, remote: str) -> Origin:
        return self._resolver().resolve(remote)

    def begin(self, event: LoginEvent, at: float | None = None) -> Outcome | Prepared:
        """The part of a report that needs no waiting: an answer, or what ``finish`` needs.

        A fresh repeat login from a known origin (most logins) is answered here, on the event
        loop, with one indexed read and no write.
        """
        at = time.time() if at is None else at
        account = normalize_login(event.login, self._config.accounts)
        log.debug(
            "report %s success=%s for %s from %s",
            event.protocol,
            event.success,
            account,
            event.remote,
        )
        if self.events is not None:
            self.events.write(
                Event(
                    event.login,
                    event.remote,
                    event.protocol,
                    bool(event.success),
                    at,
                    event.device_id,
                )
            )
        if not event.success:
            return Prepared(account, None, at)
        origin = self.origin(event.remote)
        self._on_origin(origin)
        client = _client(event)
        blocked = self._blocked(account, origin, at)
        if blocked is not None:
            # never a fresh repeat: the login makes an urgent notice
            return Prepared(account, origin, at, blocked=blocked, client=client)
        kept, known = self.histories.lookup(account, origin)
        history = None
        if not kept:
            if self._immediate is None:
                return Prepared(account, origin, at, client=client)
            version = self.histories.version()
            history = self._immediate.history_now(account)
            self.histories.put(account, history, version)
            known = history.find(origin)
        if self._fresh_repeat(known, at, client):
            return Outcome(decision=KNOWN)
        # a kept history that does not make this a fresh repeat is not read again: the write
        # decides against the history as stored
        if history is None:
            history = self.histories.get(account)
        return Prepared(account, origin, at, history, client=client)

    def _blocked(self, account: str, origin: Origin, at: float) -> BlockTarget | None:
        """The account's block ``origin`` is in, when no login from it made a notice in the
        last hour here (a client polling from a blocked origin makes one an hour, not one a
        poll)."""
        if self._blocks is None:
            return None
        target = self._blocks.refusing(account, origin, at)
        if target is None:
            return None
        last = self._blocked_seen.get((account, target))
        if last is not None and 0 <= at - last < BLOCKED_NOTICE_EVERY_S:
            return None
        if len(self._blocked_seen) >= 10_000:
            self._blocked_seen = {
                key: seen
                for key, seen in self._blocked_seen.items()
                if 0 <= at - seen < BLOCKED_NOTICE_EVERY_S
            }
        self._blocked_seen[(account, target)] = at
        return target

    def _fresh_repeat(self, known: KnownOrigin | None, at: float, client: Client | None) -> bool:
        return fresh_repeat(
            known,
            at,
            self._config.policy.touch_granularity_s,
            self._config.delivery.coalesce_window_s,
            client,
        )

    async def finish(self, event: LoginEvent, prepared: Prepared) -> Outcome:
        """Record what ``begin`` could not answer: a failure, or a login that writes.

        At most ``[storage] max_pending_writes`` reports wait at once, whether for a history
        read or a commit, so that a slow store cannot make memory grow with the load: one more
        raises ``Overloaded`` at once.
        """
        if self.pending >= self._max_pending:
            raise Overloaded(f"{self.pending} reports already waiting for the store")
        self.pending += 1
        try:
            return await self._finish(event, prepared)
        finally:
            self.pending -= 1

    async def _finish(self, event: LoginEvent, prepared: Prepared) -> Outcome:
        account, origin, at = prepared.account, prepared.origin, prepared.at
        if origin is None:
            await self._store.record_failure(account, at)
            return Outcome(decision=KNOWN, wrote=True)
        decide = self._decide
        if is_exempt(account, self._config.accounts):
            decide = lambda history, origin, at, client: exempted(  # noqa: E731
                self._decide(history, origin, at, client)
            )
        if prepared.blocked is not None:
            block = prepared.blocked.describe()
            decide = lambda history, origin, at, client: from_blocked(  # noqa: E731
                self._decide(history, origin, at, client), block
            )
        # a store that reads without waiting was already asked in begin
        elif prepared.history is None:
            version = self.histories.version()
            history = await self._store.history(account)
            self.histories.put(account, history, version)
            if self._fresh_repeat(history.find(origin), at, prepared.client):
                return Outcome(decision=KNOWN)
        delivery = self._config.delivery
        # the kept history goes before the write starts (a read meanwhile is not kept) and
        # again once it is committed
        self.histories.drop(account)
        try:
            outcome = await self._store.record_success(
                SuccessfulLogin(
                    account=account,
                    login=event.login,
                    protocol=event.protocol,
                    remote=event.remote,
                    origin=origin,
                    at=at,
                    client=prepared.client,
                ),
                decide,
                self._channels,
                touch_after=self._config.policy.touch_granularity_s,
                deadline_s=self._config.queue.deadline_s,
                hold_s=delivery.hold_s,
                coalesce_s=delivery.coalesce_window_s,
            )
        finally:
            self.histories.drop(account)
        if outcome.notice_id is not None:
            self._on_notice()
        if prepared.blocked is not None:
            self._on_blocked(account, origin, prepared.blocked, outcome.notice_id)
        if Reason.MANY_ORIGINS in outcome.decision.reasons:
            self._on_hijack(account, outcome.decision.spread, outcome.notice_id)
        return outcome

    async def report(self, event: LoginEvent, at: float | None = None) -> Outcome:
        """Record one report and return what it led to."""
        started = self.begin(event, at)
        if isinstance(started, Outcome):
            return started
        return await self.finish(event, started)
