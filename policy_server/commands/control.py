"""The commands that stop and start owner notices: pause, resume, the breaker, held notices."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from ..accounts import normalize_login
from ..config import Config
from ..delivery.breaker import BREAKER, GEO_HOLD, PAUSE
from ..delivery.geo_guard import GEO_FILES, fingerprint
from ..store import open_store
from ..store.base import HeldFilter, Store


def operator() -> str:
    """Who runs the command, for the record: the sudo user, else the login name."""
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


async def _with_store(config: Config) -> Store:
    return await open_store(config.storage)


async def set_pause(config: Config, paused: bool, out: TextIO | None = None) -> int:
    """Stop (or restart) every owner notice, for every process sharing the store."""
    store = await _with_store(config)
    now = time.time()
    try:
        changed = await store.set_control(
            PAUSE,
            {"paused": paused, "by": operator(), "at": now},
            now,
            unless=("paused", paused),
        )
    finally:
        await store.close()
    state = "paused" if paused else "running"
    print(f"owner notices {state}" + ("" if changed else " (already)"), file=out)
    return 0


async def breaker_status(config: Config, out: TextIO | None = None) -> int:
    store = await _with_store(config)
    try:
        pause = await store.control(PAUSE) or {}
        breaker = await store.control(BREAKER) or {}
        geo = await store.control(GEO_HOLD) or {}
        held = await store.held_summary(HeldFilter())
    finally:
        await store.close()
    paused = bool(pause.get("paused"))
    print(
        f"owner notices: {'PAUSED by ' + str(pause.get('by')) if paused else 'running'}"
        + (f" since {_when(pause.get('at'))}" if paused else ""),
        file=out,
    )
    if breaker.get("state") == "open":
        print(f"breaker: OPEN since {_when(breaker.get('opened_at'))}", file=out)
        print(f"  cause: {breaker.get('cause')}", file=out)
        print(f"  numbers: {json.dumps(breaker.get('numbers'))}", file=out)
    else:
        print("breaker: closed", file=out)
    if geo.get("hold"):
        print(f"geo data: HOLDING since {_when(geo.get('since'))}: {geo.get('cause')}", file=out)
    print(f"held notices: {sum(held.get('channel', {}).values())}", file=out)
    return 0


async def breaker_close(config: Config, out: TextIO | None = None) -> int:
    """Close the breaker and end a geo hold (accepting the geo files in use)."""
    store = await _with_store(config)
    now = time.time()
    who = operator()
    try:
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
    finally:
        await store.close()
    print(
        ("breaker closed" if closed else "breaker was not open")
        + ("; geo data accepted, hold ended" if geo.get("hold") else "")
        + "; held notices stay held until `outbox release` or `outbox discard`",
        file=out,
    )
    return 0


def held_filter(config: Config, args: Any) -> HeldFilter:
    return HeldFilter(
        reason=args.reason or "",
        provider=(args.provider or "").strip(),
        country=(args.country or "").strip().upper(),
        account=normalize_login(args.login, config.accounts) if args.login else "",
    )


async def outbox_held(config: Config, filters: HeldFilter, out: TextIO | None = None) -> int:
    store = await _with_store(config)
    try:
        summary = await store.held_summary(filters)
    finally:
        await store.close()
    total = sum(summary.get("channel", {}).values())
    print(f"held deliveries: {total}", file=out)
    for name in ("reason", "provider", "country", "channel"):
        counts = summary.get(name, {})
        if counts:
            print(f"by {name}:", file=out)
            for key, count in counts.items():
                print(f"  {key:<24} {count}", file=out)
    return 0


async def outbox_release(config: Config, filters: HeldFilter, out: TextIO | None = None) -> int:
    store = await _with_store(config)
    try:
        now = time.time()
        note = f"released by {operator()} at {_when(now)}"
        count = await store.release_held(filters, now, config.breaker.release_per_s, note)
    finally:
        await store.close()
    if count:
        span = count / config.breaker.release_per_s
        print(f"released {count} held deliveries; they go out over about {span:.0f}s", file=out)
    else:
        print("no held deliveries matched", file=sys.stderr)
    return 0 if count else 1


async def outbox_discard(config: Config, filters: HeldFilter, out: TextIO | None = None) -> int:
    store = await _with_store(config)
    now = time.time()
    note = f"discarded by {operator()} at {_when(now)}"
    try:
        count = await store.discard_held(filters, note, now)
    finally:
        await store.close()
    if count:
        print(f"discarded {count} held deliveries ({note})", file=out)
    else:
        print("no held deliveries matched", file=sys.stderr)
    return 0 if count else 1
