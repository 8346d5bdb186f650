"""``history show|export|forget``: an account's origins and decisions; privacy requests.

Recording history from past logins is ``import-log`` (commands/import_log.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TextIO, TypeAlias

from ..accounts import is_exempt, normalize_login
from ..config import Config
from ..model import AccountSettings, History, KnownOrigin
from ..policy import live_origins
from ..store.base import AccountRecord
from .account import describe
from .cli import Handler, Subparsers, add_command, add_group, config_command
from .session import store_session

LoginAction: TypeAlias = Callable[[Config, str], Coroutine[Any, Any, int]]


def register(commands: Subparsers) -> None:
    actions = add_group(
        commands, "history", help="an account's origins and decisions; privacy requests"
    )
    for name, action, text in (
        (
            "show",
            history_show,
            "origins (known or forgotten) and recent decisions with their reasons",
        ),
        ("export", history_export, "everything stored about the account, as JSON"),
        ("forget", history_forget, "delete everything stored about the account"),
    ):
        one = add_command(actions, name, _for_login(action), help=text)
        one.add_argument("login", metavar="LOGIN")


def _for_login(action: LoginAction) -> Handler:
    """A handler running ``action`` on the command line's LOGIN."""

    async def command(config: Config, args: argparse.Namespace) -> int:
        return await action(config, args.login)

    command.__name__ = action.__name__
    return config_command(command)


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def _short(value: float | None) -> str:
    return (_iso(value) or "-").replace("T", " ").replace("+00:00", "Z")


async def _record(config: Config, login: str) -> AccountRecord | None:
    async with store_session(config) as store:
        return await store.account_record(normalize_login(login, config.accounts))


def _known(row: dict[str, Any]) -> KnownOrigin:
    return KnownOrigin(
        row["prefix"],
        row["country"],
        row["provider"],
        row["as_org"],
        row["first_seen"],
        row["last_seen"],
        row["count"],
        row.get("network"),
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
    if is_exempt(account["account"], config.accounts):
        print(
            "exempt from notices ([accounts] exempt): logins are learned, never notified", file=out
        )
    settings = AccountSettings(
        **{
            k: record["settings"][k]
            for k in ("notices", "trip_country", "trip_until", "alerted_at")
        }
    )
    for line in describe(account["account"], settings, config, time.time()):
        if not line.startswith("exempt"):
            print(line, file=out)
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
        if row.get("confirmed") is not None:
            state += f", confirmed by the owner {_short(row['confirmed'])}"
        if row.get("clients"):
            state += f"; programs: {', '.join(row['clients'])}"
        print(
            f"  {row['prefix']:<20} {row['country'] or '??':<3} {provider}  "
            f"{_short(row['first_seen'])} .. {_short(row['last_seen'])}  "
            f"{row['count']} logins  {state}",
            file=out,
        )
    now = time.time()
    blocks = [row for row in record["blocks"] if row["until"] > now]
    print(f"blocks in force ({len(blocks)}):", file=out)
    for row in blocks:
        what = f"{row['kind']} {row['key']}"
        if row["kind"] == "provider":
            what += f" in {row['country'] or '??'}"
        print(
            f"  {what}  until {_short(row['until'])}  by {row['source']}"
            f"{' from notice ' + row['notice_id'] if row['notice_id'] else ''}",
            file=out,
        )
    answers = record["feedback"]
    print(f"owner's answers ({len(answers)}):", file=out)
    for row in answers:
        said = "it was me" if row["answer"] == "confirmed" else "it wasn't me"
        print(
            f"  {_short(row['at'])}  {said!r} to notice {row['notice_id']}  "
            f"{row['prefix']} {row['country'] or '??'} {row['provider'] or '?'}",
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
        row["confirmed"] = _iso(row.get("confirmed"))
    for row in record["decisions"]:
        row["at"] = _iso(row["at"])
    for row in record["blocks"]:
        row["created"], row["until"] = _iso(row["created"]), _iso(row["until"])
    for row in record["feedback"]:
        row["at"] = _iso(row["at"])
    for key in ("trip_until", "alerted_at"):
        record["settings"][key] = _iso(record["settings"][key])
    print(json.dumps(record, ensure_ascii=False, indent=2), file=out)
    return 0


async def history_forget(config: Config, login: str, out: TextIO | None = None) -> int:
    """Delete everything stored about an account (history, decisions, notices, contact,
    blocks, answers)."""
    async with store_session(config, migrate=True) as store:
        counts = await store.forget(normalize_login(login, config.accounts))
    if not any(counts.values()):
        print(f"nothing stored for {login}", file=sys.stderr)
        return 1
    detail = ", ".join(f"{n} {table}" for table, n in counts.items() if n)
    print(f"forgot {login}: {detail}", file=out)
    return 0
