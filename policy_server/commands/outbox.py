"""``outbox counts|list|show|retry|purge|held|release|discard``: the notice queue.

``counts``, ``list``, ``show`` and ``held`` only read (and never migrate the store); the others
change deliveries.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO, TypeAlias

from ..accounts import normalize_login
from ..config import Config
from ..delivery.channels.base import build_channel
from ..delivery.render import Renderer
from ..delivery.rules import recipient_for, resolve_recipient
from ..model import Notice
from ..store.base import HeldFilter
from .cli import (
    CommandError,
    Handler,
    Subparsers,
    add_command,
    add_group,
    config_command,
    operator,
    when,
)
from .session import store_session

STATUSES = (
    "queued",
    "sending",
    "sent",
    "folded",
    "undeliverable",
    "dead",
    "held",
    "discarded",
    "shadow",
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
HeldAction: TypeAlias = Callable[[Config, HeldFilter], Coroutine[Any, Any, int]]


def register(commands: Subparsers) -> None:
    actions = add_group(commands, "outbox", help="inspect and act on the notice queue")
    add_command(actions, "counts", config_command(outbox_counts), help="deliveries by status")
    listing = add_command(
        actions, "list", config_command(outbox_list), help="recent deliveries as JSON lines"
    )
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--limit", type=int, default=50)
    show = add_command(
        actions,
        "show",
        config_command(lambda config, args: outbox_show(config, args.id)),
        help="a notice: reasons, history seen, message per channel, attempts and errors",
    )
    show.add_argument("id", metavar="ID")
    retry = add_command(
        actions,
        "retry",
        config_command(lambda config, args: outbox_retry(config, args.id)),
        help="queue a dead or undeliverable notice again",
    )
    retry.add_argument("id", metavar="ID")
    purge = add_command(
        actions,
        "purge",
        config_command(lambda config, args: outbox_purge(config, args.older_than)),
        help="delete finished notices older than an age",
    )
    purge.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    for name, action, text in (
        ("held", outbox_held, "held notices counted by reason, provider, country and channel"),
        ("release", outbox_release, "send held notices (at [breaker] release_per_s, oldest first)"),
        ("discard", outbox_discard, "drop held notices, recording who and when"),
    ):
        held = add_command(actions, name, _with_held_filter(action), help=text)
        held.add_argument("--reason", metavar="REASON", help="e.g. new_provider")
        held.add_argument("--provider", metavar="PROVIDER", help="e.g. AS64500")
        held.add_argument("--country", metavar="CC", help="e.g. US")
        held.add_argument("--login", metavar="LOGIN", help="one account")


def _with_held_filter(action: HeldAction) -> Handler:
    """A handler running ``action`` on the held deliveries the command line names."""

    async def command(config: Config, args: argparse.Namespace) -> int:
        return await action(config, held_filter(config, args))

    command.__name__ = action.__name__
    return config_command(command)


def parse_duration(text: str) -> float:
    """``90``, ``45m``, ``12h``, ``30d``, ``2w`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 30d, 12h, 45m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def held_filter(config: Config, args: argparse.Namespace) -> HeldFilter:
    """The held deliveries ``--reason``, ``--provider``, ``--country`` and ``--login`` mean."""
    return HeldFilter(
        reason=args.reason or "",
        provider=(args.provider or "").strip(),
        country=(args.country or "").strip().upper(),
        account=normalize_login(args.login, config.accounts) if args.login else "",
    )


# -- reading the queue -------------------------------------------------------------------------


async def outbox_counts(config: Config, args: argparse.Namespace) -> int:
    async with store_session(config) as store:
        found = await store.outbox_counts()
    for status in STATUSES:
        print(f"{status:14} {found.get(status, 0)}")
    return 0


async def outbox_list(config: Config, args: argparse.Namespace) -> int:
    async with store_session(config) as store:
        rows = await store.list_deliveries(args.status, args.limit)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if not rows:
        # stdout is JSON lines, none here; the words go to stderr
        print(f"no {args.status + ' ' if args.status else ''}deliveries", file=sys.stderr)
    return 0


def _notice_json(notice: Notice) -> dict[str, Any]:
    data = notice.payload_fields()
    data.update(account=notice.account, prefix=notice.prefix, history=list(notice.history))
    return data


async def outbox_show(config: Config, notice_id: str, out: TextIO | None = None) -> int:
    async with store_session(config) as store:
        found = await store.notice_detail(notice_id)
        if found is None:
            print(f"no notice {notice_id}", file=sys.stderr)
            return 1
        notice, deliveries = found
        contact = await store.contact(notice.account)
    renderer = Renderer(config.message, config.web, config.compromise.window_s)
    by_name = {c.name: c for c in config.channels}
    shown: list[dict[str, Any]] = []
    for state in deliveries:
        delivery: dict[str, Any] = dict(state)
        shown.append(delivery)
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
            {"notice": _notice_json(notice), "deliveries": shown}, ensure_ascii=False, indent=2
        ),
        file=out,
    )
    return 0


async def outbox_held(config: Config, filters: HeldFilter, out: TextIO | None = None) -> int:
    async with store_session(config) as store:
        summary = await store.held_summary(filters)
    total = sum(summary.get("channel", {}).values())
    print(f"held deliveries: {total}", file=out)
    for name in ("reason", "provider", "country", "channel"):
        counts = summary.get(name, {})
        if counts:
            print(f"by {name}:", file=out)
            for key, count in counts.items():
                print(f"  {key:<24} {count}", file=out)
    return 0


# -- changing it -------------------------------------------------------------------------------


async def outbox_retry(config: Config, notice_id: str, out: TextIO | None = None) -> int:
    """Queue the dead and undeliverable deliveries of a notice again; a notice that has none
    is a failure that says what its deliveries are."""
    async with store_session(config, migrate=True) as store:
        now = time.time()
        count = await store.retry(notice_id, now, now + config.queue.deadline_s)
        found = None if count else await store.notice_detail(notice_id)
    if count:
        print(f"{count} delivery(ies) of {notice_id} queued again", file=out)
        return 0
    if found is None:
        raise CommandError(f"no notice {notice_id}")
    states = ", ".join(f"{d['status']} ({d['channel']})" for d in found[1]) or "none"
    raise CommandError(
        f"notice {notice_id} has no dead or undeliverable delivery: its deliveries are {states}"
    )


async def outbox_purge(config: Config, older_than: str, out: TextIO | None = None) -> int:
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    async with store_session(config, migrate=True) as store:
        count = await store.purge(time.time() - age)
    print(f"purged {count} notice(s) older than {older_than}", file=out)
    return 0


async def outbox_release(config: Config, filters: HeldFilter, out: TextIO | None = None) -> int:
    async with store_session(config, migrate=True) as store:
        now = time.time()
        note = f"released by {operator()} at {when(now)}"
        count = await store.release_held(filters, now, config.breaker.release_per_s, note)
    if count:
        span = count / config.breaker.release_per_s
        print(f"released {count} held deliveries; they go out over about {span:.0f}s", file=out)
    else:
        print("no held deliveries matched", file=sys.stderr)
    return 0 if count else 1


async def outbox_discard(config: Config, filters: HeldFilter, out: TextIO | None = None) -> int:
    now = time.time()
    note = f"discarded by {operator()} at {when(now)}"
    async with store_session(config, migrate=True) as store:
        count = await store.discard_held(filters, note, now)
    if count:
        print(f"discarded {count} held deliveries ({note})", file=out)
    else:
        print("no held deliveries matched", file=sys.stderr)
    return 0 if count else 1
