"""``replay``: what a candidate config would have notified, on past logins, beside the current one.

Each config runs the same events through the real recording path (resolver, known networks,
decision, coalescing) into a throw-away SQLite store; nothing is sent and the live store is not
touched. The figures are the notices each config would have queued.

``-c/--config`` is the config in use, as in every command, and ``--candidate`` the one to try.
The spelling of earlier versions, ``replay --config NEW.toml -c CURRENT.toml`` (``--config``
naming the candidate, ``-c``/``--current`` the config in use), still works, with a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from ..config import Config
from ..events import Event, ReadStats, batches, merged_events
from ..logs import setup_logging
from ..model import Command, LoginEvent, Reason
from ..origin.address import AddressError
from ..origin.networks import KnownNetworks, NetworksError
from ..origin.resolver import OriginResolver
from ..service.recorder import LoginRecorder
from .cli import ZONE_HELP, CommandError, Subparsers, add_command, load, log_zone, run
from .progress import Progress
from .session import store_session

USAGE = (
    "%(prog)s --candidate NEW.toml [-c CURRENT.toml] [--json] [--log-timezone ZONE] FILE [FILE ...]"
)
DEPRECATED = (
    "policy-server: warning: `replay --config NEW.toml -c CURRENT.toml` is deprecated;"
    " write `replay --candidate NEW.toml -c CURRENT.toml` (-c/--config is the config in use,"
    " as in every command)"
)


def register(commands: Subparsers) -> None:
    rep = add_command(
        commands,
        "replay",
        replay_command,
        config=False,
        help="run past logins through the current and a candidate config; compare the notices",
        usage=USAGE,
        epilog="The spelling of earlier versions, --config NEW.toml -c CURRENT.toml, still works"
        " (with a warning).",
    )
    rep.add_argument("files", nargs="+", metavar="FILE", help="Dovecot logs or an events export")
    rep.add_argument("--candidate", metavar="NEW.toml", help="the config to try (required)")
    rep.add_argument(
        "-c",
        "--config",
        action=_Spelled,
        metavar="FILE",
        help="the config in use (default: the embedded defaults)",
    )
    # the old long name of -c
    rep.add_argument("--current", action=_Spelled, dest="config", help=argparse.SUPPRESS)
    rep.add_argument("--json", action="store_true", help="print the figures as JSON")
    rep.add_argument("--log-timezone", default="local", metavar="ZONE", help=ZONE_HELP)
    rep.set_defaults(config_spellings=())


class _Spelled(argparse.Action):
    """Stores the file like ``store`` and remembers how it was named (``-c``, ``--config``,
    ``--current``), in order: the old spelling gave ``--config`` another meaning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.config_spellings = (*namespace.config_spellings, (option_string, values))


def config_paths(args: argparse.Namespace) -> tuple[str | None, str, bool]:
    """(the config in use, the candidate, whether the old spelling named them)."""
    spellings: tuple[tuple[str, str], ...] = args.config_spellings
    if args.candidate is not None:
        return args.config, args.candidate, False
    candidates = [path for option, path in spellings if option == "--config"]
    if not candidates:
        raise CommandError("replay: name the config to try with --candidate NEW.toml", status=2)
    current = [path for option, path in spellings if option != "--config"]
    return (current[-1] if current else None), candidates[-1], True


def replay_command(args: argparse.Namespace) -> int:
    current_path, candidate_path, deprecated = config_paths(args)
    if deprecated:
        print(DEPRECATED, file=sys.stderr)
    configs: dict[str, Config] = {}
    problems: list[str] = []
    for name, path in (("current", current_path), ("candidate", candidate_path)):
        try:
            configs[name] = load(path)
        except CommandError as exc:
            problems.append(str(exc))
    if problems:
        raise CommandError("\npolicy-server: ".join(problems))
    setup_logging("warning")
    try:
        return run(
            replay_configs(
                configs, [Path(f) for f in args.files], log_zone(args.log_timezone), args.json
            )
        )
    except NetworksError as exc:
        raise CommandError(str(exc)) from exc


async def replay_configs(
    configs: dict[str, Config],
    paths: list[Path],
    zone: tzinfo,
    as_json: bool,
    out: TextIO | None = None,
) -> int:
    """Run the same past logins through each config and print the notices side by side."""
    # the files are read once, merged in time order as they are read, and each batch goes to
    # every config in turn: memory stays flat however long the logs are
    progress = Progress("replay")
    read = ReadStats(progress=progress)
    try:
        async with contextlib.AsyncExitStack() as stack:
            runs = {
                name: await stack.enter_async_context(replaying(config))
                for name, config in configs.items()
            }
            for batch in batches(merged_events(paths, zone, read)):
                await asyncio.gather(*(run.feed(batch) for run in runs.values()))
            results = {name: run.finish() for name, run in runs.items()}
    finally:
        progress.done()
    events = read.events
    if as_json:
        document = {
            "events": events,
            "lines": read.lines,
            **{name: result.as_dict() for name, result in results.items()},
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        print(f"{events} logins from {read.lines} lines", file=out)
        if read.out_of_order:
            print(
                f"{read.out_of_order} logins earlier than a line before them in the same file"
                " (a clock step?): replayed where they stand",
                file=out,
            )
        print(format_side_by_side(results), file=out)
    return 0


# -- the engine --------------------------------------------------------------------------------

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
    # every reason found, notified or not
    found: Counter[str] = field(default_factory=Counter)
    # notifying logins taken into the notice of another login from the same place
    joined: int = 0
    # accounts the admin channels were alerted about (many_origins)
    alerts: int = 0

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
            "found": dict(sorted(self.found.items())),
            "joined": self.joined,
            "alerts": self.alerts,
        }


async def replay(config: Config, events: Iterable[Event]) -> ReplayResult:
    """Run ``events`` (in time order, read as they come) through ``config`` in a temporary
    store."""
    async with replaying(config) as run:
        for batch in batches(events):
            await run.feed(batch)
        return run.finish()


@contextlib.asynccontextmanager
async def replaying(config: Config) -> AsyncIterator[Replay]:
    """A replay of ``config`` in a throw-away SQLite store, whatever the live store is; fed
    batches of events in time order (``Replay.feed``)."""
    with tempfile.TemporaryDirectory(prefix="policy-server-replay-") as directory:
        storage = config.storage.model_copy(
            update={
                "backend": "sqlite",
                "path": str(Path(directory) / "replay.sqlite3"),
                "synchronous": "normal",
            }
        )
        throwaway = config.model_copy(update={"storage": storage})
        resolver = await asyncio.to_thread(OriginResolver.from_config, config.geoip)
        try:
            resolver.networks = KnownNetworks.load(config.networks)
            async with store_session(throwaway, migrate=True) as store:
                yield Replay(config, LoginRecorder(config, store, lambda: resolver, (CHANNEL,)))
        finally:
            resolver.close()


class Replay:
    """What one config makes of the events fed to it."""

    def __init__(self, config: Config, recorder: LoginRecorder) -> None:
        self._recorder = recorder
        self._zone = ZoneInfo(config.message.timezone)
        self._notified: set[str] = set()
        self.result = ReplayResult()

    async def feed(self, batch: list[Event]) -> None:
        """One batch of ``events.batches`` (each login at most once in it)."""
        await asyncio.gather(*(self._one(event) for event in batch))

    def finish(self) -> ReplayResult:
        self.result.accounts_notified = len(self._notified)
        return self.result

    async def _one(self, event: Event) -> None:
        result = self.result
        login = LoginEvent(
            command=Command.REPORT,
            login=event.login,
            remote=event.remote,
            protocol=event.protocol,
            success=event.success,
            device_id=event.device_id,
        )
        try:
            outcome = await self._recorder.report(login, at=event.at)
        except AddressError:
            result.bad_addresses += 1
            return
        if not event.success:
            result.failures += 1
            return
        result.logins += 1
        decision = outcome.decision
        result.found.update(r.value for r in decision.reasons)
        if Reason.MANY_ORIGINS in decision.reasons:
            result.alerts += 1
        if outcome.notice_id is not None:
            result.notices += 1
            self._notified.add(login.login.casefold())
            result.by_reason.update(r.value for r in decision.notify)
            day = datetime.fromtimestamp(event.at, self._zone).date().isoformat()
            result.by_day[day] += 1
        elif decision.notify and outcome.wrote:
            result.joined += 1
        elif decision.unusual:
            result.silent += 1


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
    add("joined another notice", [results[n].joined for n in names])
    add("admin alerts", [results[n].alerts for n in names])
    reasons = sorted(set().union(*(results[n].by_reason for n in names)))
    if reasons:
        rows.append(("by reason", []))
        for reason in reasons:
            add(f"  {reason}", [results[n].by_reason[reason] for n in names])
    found = sorted(set().union(*(results[n].found for n in names)))
    if found:
        rows.append(("found, notified or not", []))
        for reason in found:
            add(f"  {reason}", [results[n].found[reason] for n in names])
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
