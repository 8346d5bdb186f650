"""``policy-server import-log``: build accounts' history from past logins, queuing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from ..accounts import normalize_login
from ..config import Config
from ..events import Event, ReadStats, batches, read_events
from ..origin.address import AddressError
from ..origin.resolver import OriginResolver
from ..policy import KNOWN
from ..store import open_store
from ..store.base import Store, SuccessfulLogin


@dataclass
class ImportStats:
    read: ReadStats
    recorded: int = 0
    accounts: int = 0
    bad_addresses: int = 0


async def record_history(
    store: Store, resolver: OriginResolver, config: Config, events: Iterable[Event]
) -> ImportStats:
    """Record each successful login as history: never a decision, never a notice."""
    stats = ImportStats(read=ReadStats())
    accounts: set[str] = set()

    async def one(event: Event) -> None:
        try:
            origin = resolver.resolve(event.remote)
        except AddressError:
            stats.bad_addresses += 1
            return
        account = normalize_login(event.login, config.accounts)
        login = SuccessfulLogin(
            account=account,
            login=event.login,
            protocol=event.protocol,
            remote=event.remote,
            origin=origin,
            at=event.at,
        )
        await store.record_success(
            login,
            lambda _history, _origin, _at: KNOWN,
            (),
            touch_after=config.policy.touch_granularity_s,
            deadline_s=config.queue.deadline_s,
        )
        accounts.add(account)
        stats.recorded += 1

    for batch in batches(e for e in events if e.success):
        await asyncio.gather(*(one(event) for event in batch))
    stats.accounts = len(accounts)
    return stats


async def import_logs(config: Config, paths: list[Path], zone: tzinfo) -> ImportStats:
    """Read every file, oldest login first, and record the logins as history."""
    read = ReadStats()
    # first and last seen come out right only in time order, whatever order the files are in
    events = sorted(read_events(paths, zone, read), key=lambda e: e.at)
    resolver = await asyncio.to_thread(OriginResolver.from_config, config.geoip)
    store = await open_store(config.storage)
    try:
        stats = await record_history(store, resolver, config, events)
    finally:
        await store.close()
        resolver.close()
    stats.read = read
    return stats
