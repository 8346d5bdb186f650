"""``contacts import|show|remove``: who receives each account's notices."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any, TextIO

from ..accounts import normalize_login
from ..config import Config
from ..delivery.rules import looks_like
from ..store.base import Contact
from .cli import Subparsers, add_command, add_group, config_command
from .session import store_session

CONTACT_COLUMNS = ("login", "email", "phone", "language", "timezone")


def register(commands: Subparsers) -> None:
    actions = add_group(commands, "contacts", help="who receives each account's notices")
    imp = add_command(
        actions,
        "import",
        config_command(lambda config, args: contacts_import(config, Path(args.file))),
        help="add or replace contacts from a CSV file (login,email,phone,language,timezone)",
    )
    imp.add_argument("file", metavar="FILE.csv")
    show = add_command(
        actions,
        "show",
        config_command(lambda config, args: contacts_show(config, args.login)),
        help="print an account's contact",
    )
    show.add_argument("login", metavar="LOGIN")
    remove = add_command(
        actions,
        "remove",
        config_command(lambda config, args: contacts_remove(config, args.login)),
        help="delete it",
    )
    remove.add_argument("login", metavar="LOGIN")


def read_contacts(path: Path, config: Config) -> tuple[list[Contact], list[str]]:
    """Contacts from a CSV file with a header row; (rows, problems with their line numbers)."""
    contacts: list[Contact] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        if "login" not in header:
            return [], [f"{path}: the first line must name the columns, with at least 'login'"]
        unknown = set(header) - set(CONTACT_COLUMNS)
        if unknown:
            problems.append(f"{path}: unknown column(s) {', '.join(sorted(unknown))}")
        for raw in reader:
            line = reader.line_num
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            login = row.get("login", "")
            if not login:
                problems.append(f"line {line}: empty login")
                continue
            email = row.get("email") or None
            phone = row.get("phone") or None
            tz = row.get("timezone") or None
            if email and not looks_like("email", email):
                problems.append(f"line {line}: {email!r} is not an e-mail address")
            if phone and not looks_like("phone", phone.replace(" ", "").replace("-", "")):
                problems.append(f"line {line}: {phone!r} is not a phone number (+81901234567)")
            if tz:
                try:
                    zoneinfo.ZoneInfo(tz)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    problems.append(f"line {line}: unknown time zone {tz!r}")
            account = normalize_login(login, config.accounts)
            if account in seen:
                problems.append(f"line {line}: {login!r} already on line {seen[account]}")
            seen[account] = line
            contacts.append(
                Contact(
                    account,
                    email,
                    phone.replace(" ", "").replace("-", "") if phone else None,
                    row.get("language") or None,
                    tz,
                )
            )
    return contacts, problems


async def contacts_import(config: Config, path: Path, out: TextIO | None = None) -> int:
    try:
        contacts, problems = read_contacts(path, config)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if problems:
        # all or nothing: a half-imported file is harder to reason about than none
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"nothing imported: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    async with store_session(config, migrate=True) as store:
        count = await store.upsert_contacts(contacts, time.time())
    print(f"imported {count} contact(s) from {path}", file=out)
    return 0


async def contacts_show(config: Config, login: str, out: TextIO | None = None) -> int:
    async with store_session(config) as store:
        contact = await store.contact(normalize_login(login, config.accounts))
    if contact is None:
        print(f"no contact for {login}", file=sys.stderr)
        return 1
    print(json.dumps(_contact(contact), ensure_ascii=False), file=out)
    return 0


def _contact(contact: Contact) -> dict[str, Any]:
    return dataclasses.asdict(contact)


async def contacts_remove(config: Config, login: str, out: TextIO | None = None) -> int:
    async with store_session(config, migrate=True) as store:
        removed = await store.remove_contact(normalize_login(login, config.accounts))
    print(f"{'removed' if removed else 'no contact for'} {login}", file=out)
    return 0 if removed else 1
