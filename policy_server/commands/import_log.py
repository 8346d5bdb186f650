"""``import-log``: build accounts' history from past logins (Dovecot logs or an events export),
queuing nothing."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import TextIO

from ..accounts import normalize_login
from ..config import Config
from ..events import Event, ReadStats, batches, merged_events
from ..origin.address import AddressError
from ..origin.resolver import OriginResolver
from ..policy import KNOWN
from ..store.base import Store, SuccessfulLogin
from .cli import ZONE_HELP, Subparsers, add_command, config_command, log_zone
from .progress import Progress
from .session import store_session


def register(commands: Subparsers) -> None:
    imp = add_command(
        commands,
        "import-log",
        config_command(import_log_command),
        help="build history from Dovecot login log lines (gzip too); queues no notice",
    )
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.add_argument("--log-timezone", default="local", metavar="ZONE", help=ZONE_HELP)


async def import_log_command(config: Config, args: argparse.Namespace) -> int:
    return await import_log(config, [Path(f) for f in args.files], log_zone(args.log_timezone))


async def import_log(
    config: Config, paths: list[Path], zone: tzinfo, out: TextIO | None = None
) -> int:
    """Build history from Dovecot login lines (or an events export); no notice is queued."""
    stats = await import_logs(config, paths, zone)
    print(
        f"recorded {stats.recorded} logins of {stats.accounts} accounts from "
        f"{len(paths)} file(s) ({stats.read.lines} lines, "
        f"{stats.read.lines - stats.read.events} without a login)",
        file=out,
    )
    if stats.bad_addresses:
        print(f"skipped {stats.bad_addresses} logins with an invalid address", file=out)
    if stats.read.out_of_order:
        print(
            f"{stats.read.out_of_order} logins earlier than a line before them in the same file"
            " (a clock step?): recorded where they stand",
            file=out,
        )
    return 0


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
            lambda _history, _origin, _at, _client: KNOWN,
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
    """Read every file, oldest login first (the files merged as they are read), and record
    the logins as history: memory stays flat however long the logs are."""
    progress = Progress("import-log")
    read = ReadStats(progress=progress)
    # first and last seen come out right only in time order, whatever order the files are in
    events = merged_events(paths, zone, read)
    resolver = await asyncio.to_thread(OriginResolver.from_config, config.geoip)
    try:
        async with store_session(config, migrate=True) as store:
            stats = await record_history(store, resolver, config, events)
    finally:
        resolver.close()
        progress.done()
    stats.read = read
    return stats
