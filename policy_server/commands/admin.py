"""What operators do from the command line: contacts, the outbox, test notices."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
import uuid
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..accounts import normalize_login
from ..config import Config
from ..delivery.channels.base import build_channel
from ..delivery.channels.errors import DeliveryError
from ..delivery.render import Renderer
from ..delivery.rules import looks_like, recipient_for, resolve_recipient
from ..model import AddressClass, Notice, Reason
from ..store import open_store
from ..store.base import Contact, Store

CONTACT_COLUMNS = ("login", "email", "phone", "language", "timezone")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``45m``, ``12h``, ``30d``, ``2w`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 30d, 12h, 45m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


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
    store = await open_store(config.storage)
    try:
        count = await store.upsert_contacts(contacts, time.time())
    finally:
        await store.close()
    print(f"imported {count} contact(s) from {path}", file=out)
    return 0


async def contacts_show(config: Config, login: str, out: TextIO | None = None) -> int:
    store = await open_store(config.storage)
    try:
        contact = await store.contact(normalize_login(login, config.accounts))
    finally:
        await store.close()
    if contact is None:
        print(f"no contact for {login}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            contact.__dict__ if hasattr(contact, "__dict__") else _contact(contact),
            ensure_ascii=False,
        ),
        file=out,
    )
    return 0


def _contact(contact: Contact) -> dict[str, Any]:
    return {
        "account": contact.account,
        "email": contact.email,
        "phone": contact.phone,
        "language": contact.language,
        "timezone": contact.timezone,
    }


async def contacts_remove(config: Config, login: str, out: TextIO | None = None) -> int:
    store = await open_store(config.storage)
    try:
        removed = await store.remove_contact(normalize_login(login, config.accounts))
    finally:
        await store.close()
    print(f"{'removed' if removed else 'no contact for'} {login}", file=out)
    return 0 if removed else 1


def _notice_json(notice: Notice) -> dict[str, Any]:
    data = notice.payload_fields()
    data.update(account=notice.account, prefix=notice.prefix, history=list(notice.history))
    return data


async def outbox_show(config: Config, notice_id: str, out: TextIO | None = None) -> int:
    store = await open_store(config.storage)
    try:
        found = await store.notice_detail(notice_id)
        if found is None:
            print(f"no notice {notice_id}", file=sys.stderr)
            return 1
        notice, deliveries = found
        contact = await store.contact(notice.account)
    finally:
        await store.close()
    renderer = Renderer(config.message)
    by_name = {c.name: c for c in config.channels}
    for delivery in deliveries:
        channel_config = by_name.get(delivery["channel"])
        if channel_config is None:
            delivery["message"] = None
            continue
        try:
            channel = build_channel(channel_config)
        except ValueError as exc:
            # a channel check-config refuses (a malformed secret): show the rest anyway
            delivery["message"] = None
            delivery["problem"] = str(exc)
            continue
        recipient = recipient_for(channel.recipient_kind, channel_config, contact, notice.login)
        delivery["recipient"] = recipient.address if recipient else None
        # without an address the message is still the one in the contact's language and zone
        rendered = renderer.render(
            notice, recipient or resolve_recipient(None, contact, notice.login, "none", "")
        )
        delivery["message"] = {
            "subject": rendered.subject,
            "body": rendered.body,
            "short": rendered.short,
        }
    print(
        json.dumps(
            {"notice": _notice_json(notice), "deliveries": deliveries}, ensure_ascii=False, indent=2
        ),
        file=out,
    )
    return 0


async def outbox_retry(config: Config, notice_id: str, out: TextIO | None = None) -> int:
    store = await open_store(config.storage)
    try:
        now = time.time()
        count = await store.retry(notice_id, now, now + config.queue.deadline_s)
    finally:
        await store.close()
    print(f"{count} delivery(ies) of {notice_id} queued again", file=out)
    return 0 if count else 1


async def outbox_purge(config: Config, older_than: str, out: TextIO | None = None) -> int:
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    store = await open_store(config.storage)
    try:
        count = await store.purge(time.time() - age)
    finally:
        await store.close()
    print(f"purged {count} notice(s) older than {older_than}", file=out)
    return 0


def sample_notice(login: str, account: str) -> Notice:
    return Notice(
        id=f"test-{uuid.uuid4()}",
        account=account,
        login=login,
        reasons=(Reason.NEW_COUNTRY, Reason.NEW_PROVIDER),
        protocol="imap",
        remote="192.0.2.1",
        time=datetime.now(UTC),
        country="DE",
        asn=64520,
        as_org="Example Net",
        prefix="192.0.2.0/24",
        protocols=("imap", "smtp"),
    )


async def send_test(
    config: Config, login: str, channel_name: str, out: TextIO | None = None
) -> int:
    """Render a sample notice for ``login`` and send it through one channel, now."""
    by_name = {c.name: c for c in config.channels}
    channel_config = by_name.get(channel_name)
    if channel_config is None:
        print(f"no channel {channel_name!r}; configured: {', '.join(by_name)}", file=sys.stderr)
        return 2
    account = normalize_login(login, config.accounts)
    store: Store = await open_store(config.storage)
    try:
        contact = await store.contact(account)
    finally:
        await store.close()
    try:
        channel = build_channel(channel_config)
    except ValueError as exc:
        print(f"{exc} (see policy-server check-config)", file=sys.stderr)
        return 1
    recipient = recipient_for(channel.recipient_kind, channel_config, contact, login)
    if recipient is None:
        print(
            f"{login}: no {channel.recipient_kind} address (contacts or fallback)", file=sys.stderr
        )
        return 1
    notice = sample_notice(login, account)
    message = Renderer(config.message).render(notice, recipient)
    await channel.open()
    try:
        await channel.send(notice, message, recipient)
    except DeliveryError as exc:
        kind = "temporary" if exc.temporary else "permanent"
        print(f"not delivered ({kind} failure): {exc}", file=sys.stderr)
        return 1
    finally:
        await channel.close()
    print(f"sent test notice {notice.id} to {recipient.address or channel_name}", file=out)
    print(message.body, file=out)
    return 0


__all__ = [
    "AddressClass",
    "contacts_import",
    "contacts_remove",
    "contacts_show",
    "outbox_purge",
    "outbox_retry",
    "outbox_show",
    "parse_duration",
    "send_test",
]
