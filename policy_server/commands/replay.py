"""``policy-server replay``: what a config would have notified, on past logins.

Each config runs the same events through the real recording path (resolver, known networks,
decision, coalescing) into a throw-away SQLite store; nothing is sent and the live store is not
touched. The figures are the notices each config would have queued.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..config import Config
from ..events import Event, batches
from ..model import Command, LoginEvent
from ..origin.address import AddressError
from ..origin.networks import KnownNetworks
from ..origin.resolver import OriginResolver
from ..service.recorder import LoginRecorder
from ..store import open_store

CHANNEL = "replay"


@dataclass
class ReplayResult:
    """What one config made of the events."""

    logins: int = 0
    failures: int = 0
    notices: int = 0
    silent: int = 0  # unusual logins that made no notice (learning, policy.notify, networks)
    accounts_notified: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)
    bad_addresses: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "logins": self.logins,
            "failures": self.failures,
            "notices": self.notices,
            "silent": self.silent,
            "accounts_notified": self.accounts_notified,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_day": dict(sorted(self.by_day.items())),
            "bad_addresses": self.bad_addresses,
        }


async def replay(config: Config, events: Sequence[Event]) -> ReplayResult:
    """Run ``events`` (in time order) through ``config`` in a temporary store."""
    result = ReplayResult()
    zone = ZoneInfo(config.message.timezone)
    notified: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="policy-server-replay-") as directory:
        storage = config.storage.model_copy(
            # always a throw-away SQLite file, whatever the live store is
            update={
                "backend": "sqlite",
                "path": str(Path(directory) / "replay.sqlite3"),
                "synchronous": "normal",
            }
        )
        resolver = await asyncio.to_thread(OriginResolver.from_config, config.geoip)
        resolver.networks = KnownNetworks.load(config.networks)
        store = await open_store(storage)
        try:
            recorder = LoginRecorder(config, store, lambda: resolver, (CHANNEL,))

            async def one(event: Event) -> None:
                login = LoginEvent(
                    command=Command.REPORT,
                    login=event.login,
                    remote=event.remote,
                    protocol=event.protocol,
                    success=event.success,
                )
                try:
                    outcome = await recorder.report(login, at=event.at)
                except AddressError:
                    result.bad_addresses += 1
                    return
                if not event.success:
                    result.failures += 1
                    return
                result.logins += 1
                decision = outcome.decision
                if outcome.notice_id is not None:
                    result.notices += 1
                    notified.add(login.login.casefold())
                    result.by_reason.update(r.value for r in decision.notify)
                    day = datetime.fromtimestamp(event.at, zone).date().isoformat()
                    result.by_day[day] += 1
                elif decision.unusual:
                    result.silent += 1

            for batch in batches(events):
                await asyncio.gather(*(one(event) for event in batch))
        finally:
            await store.close()
            resolver.close()
    result.accounts_notified = len(notified)
    return result


def format_side_by_side(results: dict[str, ReplayResult]) -> str:
    """A plain table: one column per config."""
    names = list(results)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, values: list[int]) -> None:
        rows.append((label, [str(v) for v in values]))

    add("logins", [results[n].logins for n in names])
    add("failed logins", [results[n].failures for n in names])
    add("notices", [results[n].notices for n in names])
    add("accounts notified", [results[n].accounts_notified for n in names])
    add("unusual, not notified", [results[n].silent for n in names])
    reasons = sorted(set().union(*(results[n].by_reason for n in names)))
    if reasons:
        rows.append(("by reason", []))
        for reason in reasons:
            add(f"  {reason}", [results[n].by_reason[reason] for n in names])
    days = sorted(set().union(*(results[n].by_day for n in names)))
    if days:
        rows.append(("notices by day", []))
        for day in days:
            add(f"  {day}", [results[n].by_day[day] for n in names])
    width = max(len(label) for label, _ in rows)
    columns = [max(len(n), 9) for n in names]
    lines = [" " * width + "".join(f"  {n:>{w}}" for n, w in zip(names, columns, strict=True))]
    for label, values in rows:
        cells = "".join(f"  {v:>{w}}" for v, w in zip(values, columns, strict=False))
        lines.append(f"{label:<{width}}{cells}")
    return "\n".join(lines)
