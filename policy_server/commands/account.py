"""``account LOGIN``: an account's own settings (its notices on or off, a declared trip)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import datetime
from datetime import time as time_of_day
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from ..accounts import country_code, is_exempt, normalize_login, trip_end
from ..config import Config
from ..model import AccountSettings
from .cli import CommandError, Subparsers, add_command, config_command
from .session import store_session

#: how a bad option is reported: the exit status of a usage error
USAGE = 2


def register(commands: Subparsers) -> None:
    one = add_command(
        commands,
        "account",
        config_command(account_command),
        help="an account's own settings: notices on or off, a declared trip",
    )
    one.add_argument("login", metavar="LOGIN")
    one.add_argument("--notices", choices=["on", "off"], help="turn the account's notices on/off")
    one.add_argument(
        "--travel", metavar="CC", help="declare a trip to a country (ISO code), with --until"
    )
    one.add_argument("--until", metavar="YYYY-MM-DD", help="the trip's last day")
    one.add_argument("--no-travel", action="store_true", help="end a declared trip")
    one.add_argument("--json", action="store_true", help="print the settings as JSON")


def _trip_end(day: str, zone: ZoneInfo, now: float) -> float:
    """The end of ``day`` in ``zone``; a CommandError for a malformed or past day."""
    end = trip_end(day, zone)
    if end is None:
        raise CommandError(f"--until {day!r} is not a date (YYYY-MM-DD)", USAGE)
    if end <= now:
        raise CommandError(f"--until {day} is in the past", USAGE)
    return end


def _country(text: str) -> str:
    code = country_code(text)
    if code is None:
        raise CommandError(
            f"--travel {text!r} is not an ISO 3166 two-letter country code"
            " (FR, JP; the United Kingdom is GB)",
            USAGE,
        )
    return code


def changed(settings: AccountSettings, args: argparse.Namespace, config: Config) -> AccountSettings:
    """The settings the options ask for (the same object when they ask for nothing)."""
    if args.travel and args.no_travel:
        raise CommandError("--travel and --no-travel exclude each other", USAGE)
    if bool(args.travel) != bool(args.until):
        raise CommandError("--travel CC and --until YYYY-MM-DD go together", USAGE)
    new = settings
    if args.notices is not None:
        new = replace(new, notices=args.notices == "on")
    if args.travel:
        zone = ZoneInfo(config.message.timezone)
        new = replace(
            new,
            trip_country=_country(args.travel),
            trip_until=_trip_end(args.until, zone, time.time()),
        )
    if args.no_travel:
        new = replace(new, trip_country=None, trip_until=None)
    return new


def last_day(settings: AccountSettings, config: Config) -> str | None:
    """The day (YYYY-MM-DD, in ``[message] timezone``) of the trip's last moment, None
    without a trip."""
    if not settings.trip_country or settings.trip_until is None:
        return None
    # trip_until is the first moment after that day
    zone = ZoneInfo(config.message.timezone)
    return datetime.fromtimestamp(settings.trip_until - 1, zone).date().isoformat()


def describe(account: str, settings: AccountSettings, config: Config, now: float) -> list[str]:
    """The settings as ``account`` and ``history show`` print them."""
    zone = ZoneInfo(config.message.timezone)
    lines = [f"notices: {'on' if settings.notices else 'off (logins are learned, not notified)'}"]
    last = last_day(settings, config)
    if last is not None and settings.trip_until is not None:
        end = datetime.fromtimestamp(settings.trip_until, zone)
        # a trip declared on the owner's page ends at midnight of the owner's time zone, which
        # may be another: then the moment, not a day that would read as the whole of it
        until = last if end.time() == time_of_day.min else f"{end:%Y-%m-%d %H:%M}"
        state = "" if settings.trip_until > now else " (over)"
        lines.append(f"trip: {settings.trip_country} until {until} ({zone.key}){state}")
    else:
        lines.append("trip: none")
    if is_exempt(account, config.accounts):
        lines.append("exempt from notices ([accounts] exempt)")
    if settings.alerted_at is not None:
        when = datetime.fromtimestamp(settings.alerted_at, zone).isoformat(timespec="seconds")
        lines.append(f"many_origins alert last sent: {when}")
    return lines


async def account_command(config: Config, args: argparse.Namespace) -> int:
    return await account(config, args)


async def account(config: Config, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Show an account's settings, changed first as the options say."""
    key = normalize_login(args.login, config.accounts)
    # bad options are refused before the store is opened: nothing is written
    changed(AccountSettings(), args, config)
    writes = bool(args.notices or args.travel or args.no_travel)
    async with store_session(config, migrate=writes) as store:
        settings = await store.settings(key)
        new = changed(settings, args, config)
        if new != settings:
            settings = await store.save_settings(key, new, time.time())
    if args.json:
        data: dict[str, Any] = {
            "account": key,
            **settings.as_dict(),
            "trip_last_day": last_day(settings, config),
            "exempt": is_exempt(key, config.accounts),
        }
        print(json.dumps(data, ensure_ascii=False), file=out)
        return 0
    print(f"account {key}:", file=out)
    for line in describe(key, settings, config, time.time()):
        print(f"  {line}", file=out)
    return 0
