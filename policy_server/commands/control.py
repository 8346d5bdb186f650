"""``pause``, ``resume`` and ``breaker status|close``: stopping and starting owner notices.

The held notices themselves are ``outbox held|release|discard`` (commands/outbox.py).
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from ..config import Config
from ..delivery.breaker import BREAKER, GEO_HOLD, PAUSE
from ..delivery.geo_guard import GEO_FILES, fingerprint
from ..store.base import HeldFilter
from .cli import Subparsers, add_command, add_group, config_command, operator, when
from .session import store_session


def register(commands: Subparsers) -> None:
    add_command(
        commands,
        "pause",
        config_command(lambda config, args: set_pause(config, True)),
        help="stop every owner notice, in every process sharing the store",
    )
    add_command(
        commands,
        "resume",
        config_command(lambda config, args: set_pause(config, False)),
        help="start owner notices again after pause",
    )
    actions = add_group(commands, "breaker", help="the fleet-wide breaker and the geo-data hold")
    add_command(
        actions,
        "status",
        config_command(lambda config, args: breaker_status(config)),
        help="pause, breaker and geo hold, with the numbers that tripped it",
    )
    add_command(
        actions,
        "close",
        config_command(lambda config, args: breaker_close(config)),
        help="close the breaker and accept changed geo data (held notices stay held)",
    )


async def set_pause(config: Config, paused: bool, out: TextIO | None = None) -> int:
    """Stop (or restart) every owner notice, for every process sharing the store."""
    async with store_session(config, migrate=True) as store:
        now = time.time()
        changed = await store.set_control(
            PAUSE,
            {"paused": paused, "by": operator(), "at": now},
            now,
            unless=("paused", paused),
        )
    state = "paused" if paused else "running"
    print(f"owner notices {state}" + ("" if changed else " (already)"), file=out)
    return 0


async def breaker_status(config: Config, out: TextIO | None = None) -> int:
    async with store_session(config) as store:
        pause = await store.control(PAUSE) or {}
        breaker = await store.control(BREAKER) or {}
        geo = await store.control(GEO_HOLD) or {}
        held = await store.held_summary(HeldFilter())
    paused = bool(pause.get("paused"))
    print(
        f"owner notices: {'PAUSED by ' + str(pause.get('by')) if paused else 'running'}"
        + (f" since {when(pause.get('at'))}" if paused else ""),
        file=out,
    )
    if breaker.get("state") == "open":
        print(f"breaker: OPEN since {when(breaker.get('opened_at'))}", file=out)
        print(f"  cause: {breaker.get('cause')}", file=out)
        print(f"  numbers: {json.dumps(breaker.get('numbers'))}", file=out)
    else:
        print("breaker: closed", file=out)
    if geo.get("hold"):
        print(f"geo data: HOLDING since {when(geo.get('since'))}: {geo.get('cause')}", file=out)
    print(f"held notices: {sum(held.get('channel', {}).values())}", file=out)
    return 0


async def breaker_close(config: Config, out: TextIO | None = None) -> int:
    """Close the breaker and end a geo hold (accepting the geo files in use)."""
    async with store_session(config, migrate=True) as store:
        now = time.time()
        who = operator()
        closed = await store.set_control(
            BREAKER,
            {"state": "closed", "closed_at": now, "why": f"by {who}"},
            now,
            unless=("state", "closed"),
        )
        geo = await store.control(GEO_HOLD) or {}
        if geo.get("hold"):
            await store.set_control(GEO_HOLD, {"hold": False, "ended_by": who, "at": now}, now)
            await store.set_control(GEO_FILES, {"files": fingerprint(config.geoip)}, now)
    print(
        ("breaker closed" if closed else "breaker was not open")
        + ("; geo data accepted, hold ended" if geo.get("hold") else "")
        + "; held notices stay held until `outbox release` or `outbox discard`",
        file=out,
    )
    return 0
