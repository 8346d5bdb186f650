"""The history commands: show, export and forget an account; import logs; replay configs."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TextIO

from ..accounts import normalize_login
from ..config import Config
from ..events import ReadStats, read_events
from ..model import History, KnownOrigin
from ..policy import live_origins
from ..store import open_store
from .import_log import import_logs
from .replay import ReplayResult, format_side_by_side, replay


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def _short(value: float | None) -> str:
    return (_iso(value) or "-").replace("T", " ").replace("+00:00", "Z")


async def _record(config: Config, login: str) -> dict[str, Any] | None:
    store = await open_store(config.storage)
    try:
        return await store.account_record(normalize_login(login, config.accounts))
    finally:
        await store.close()


def _known(row: dict[str, Any]) -> KnownOrigin:
    return KnownOrigin(
        row["prefix"],
        row["country"],
        row["provider"],
        row["as_org"],
        row["first_seen"],
        row["last_seen"],
        row["count"],
    )


async def history_show(config: Config, login: str, out: TextIO | None = None) -> int:
    """An account's origins (known or forgotten by aging) and its recent decisions."""
    record = await _record(config, login)
    if record is None:
        print(f"nothing stored for {login}", file=sys.stderr)
        return 1
    account = record["account"]
    print(
        f"account {account['account']}: first seen {_short(account.get('first_seen'))}, "
        f"last seen {_short(account.get('last_seen'))}, {account.get('logins', 0)} recorded "
        f"logins, {account.get('failures', 0)} failed",
        file=out,
    )
    contact = record["contact"]
    if contact:
        print(
            "contact: " + ", ".join(f"{k} {v}" for k, v in contact.items() if v is not None),
            file=out,
        )
    origins = [_known(row) for row in record["origins"]]
    live = set(live_origins(History(account["account"], tuple(origins)), config.policy))
    print(f"origins ({len(origins)}):", file=out)
    for row, known in zip(record["origins"], origins, strict=True):
        provider = row["provider"] or "provider unknown"
        if row["as_org"]:
            provider += f" ({row['as_org']})"
        state = "known" if known in live else "forgotten (unused while others were)"
        print(
            f"  {row['prefix']:<20} {row['country'] or '??':<3} {provider}  "
            f"{_short(row['first_seen'])} .. {_short(row['last_seen'])}  "
            f"{row['count']} logins  {state}",
            file=out,
        )
    print(f"recent decisions ({len(record['decisions'])}):", file=out)
    for row in record["decisions"]:
        outcome = f"notified {row['notice_id']}" if row["notified"] else "not notified"
        if row["note"]:
            outcome += f" ({row['note']})"
        where = f"{row['prefix']} {row['country'] or '??'} {row['provider'] or '?'}"
        if row["network"]:
            where += f" [{row['network']}]"
        print(
            f"  {_short(row['at'])}  {row['protocol']:<10} {where}  "
            f"{','.join(row['reasons']) or '-'}  {outcome}",
            file=out,
        )
    return 0


async def history_export(config: Config, login: str, out: TextIO | None = None) -> int:
    """Everything stored about an account, as one JSON document."""
    record = await _record(config, login)
    if record is None:
        print(f"nothing stored for {login}", file=sys.stderr)
        return 1
    for key in ("first_seen", "last_seen", "last_failure"):
        if key in record["account"]:
            record["account"][key] = _iso(record["account"][key])
    for row in record["origins"]:
        row["first_seen"], row["last_seen"] = _iso(row["first_seen"]), _iso(row["last_seen"])
    for row in record["decisions"]:
        row["at"] = _iso(row["at"])
    print(json.dumps(record, ensure_ascii=False, indent=2), file=out)
    return 0


async def history_forget(config: Config, login: str, out: TextIO | None = None) -> int:
    """Delete everything stored about an account (history, decisions, notices, contact)."""
    store = await open_store(config.storage)
    try:
        counts = await store.forget(normalize_login(login, config.accounts))
    finally:
        await store.close()
    if not any(counts.values()):
        print(f"nothing stored for {login}", file=sys.stderr)
        return 1
    detail = ", ".join(f"{n} {table}" for table, n in counts.items() if n)
    print(f"forgot {login}: {detail}", file=out)
    return 0


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
    return 0


async def replay_configs(
    configs: dict[str, Config],
    paths: list[Path],
    zone: tzinfo,
    as_json: bool,
    out: TextIO | None = None,
) -> int:
    """Run the same past logins through each config and print the notices side by side."""
    read = ReadStats()
    events = sorted(read_events(paths, zone, read), key=lambda e: e.at)
    results: dict[str, ReplayResult] = {}
    for name, config in configs.items():
        results[name] = await replay(config, events)
    if as_json:
        document = {
            "events": len(events),
            "lines": read.lines,
            **{name: result.as_dict() for name, result in results.items()},
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        print(f"{len(events)} logins from {read.lines} lines", file=out)
        print(format_side_by_side(results), file=out)
    return 0
