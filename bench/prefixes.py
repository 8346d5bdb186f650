"""The cost of a login that writes, against accounts holding 3 and 150 prefixes of a carrier.

A phone wandering through its carrier's address pools collects a new /24 every few hours, about
150 in a month, and every login that writes reads all of its account's origin rows (store/sql.py
``_write_batch``). ``[storage] origins_per_provider`` (4 by default) bounds those rows: a new
prefix of a provider and country that holds that many replaces the least recently seen one.

In one run, through the real SQLite store (a temporary file each) and its group commit, four
cases side by side: the bound (4) and the old behaviour (a bound of 1,000, never reached), each
with accounts that logged in from 3 and from 150 prefixes of one provider in one country:

1. the history: ``--accounts`` accounts, each logging in from 3, resp. 150, /24s (one every
   five hours, all four histories ending at the same moment), through ``record_success`` with
   ``policy.decide``, as the service records them;
2. the timed logins: ``--rounds`` rounds (after one untimed warm-up round), each a turn of
   ``--logins`` logins per case, each from yet another new prefix of the account's provider (so
   every one writes: it must come back with ``wrote``), ``--batch`` distinct accounts at once.
   The four cases take turns within a round, in an order that rotates from round to round, so
   whatever else the machine does weighs on all of them alike; the figure of a case is the
   median of its turns, a ratio the median of the rounds' ratios.

The group commit waits ``--wait-ms`` (0 here; the service's default is 2 ms) for more logins
after the first of a batch: a turn's wave is queued before the writer takes it, so the batches
are the same, and the wait would only add the same idle time to every case.

Printed: rows per account after the history and after the timed logins (``SELECT count(*) FROM
origins`` per account: the rows the timed logins read), the µs per login (wall clock, and CPU
time of the process with the store's writer thread), and the goal.

Usage: .venv/bin/python bench/prefixes.py [--accounts 200] [--logins 100] [--rounds 12]
Goal: with the bound, the cost at 150 prefixes is within 1.25x of the cost at 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy_server.client import Client
from policy_server.config import CompromiseConfig, PolicyConfig, QueueConfig, StorageConfig
from policy_server.model import AddressClass, History, Origin
from policy_server.policy import Decision, decide
from policy_server.store import Store, open_store
from policy_server.store.base import SuccessfulLogin

POLICY = PolicyConfig()
COMPROMISE = CompromiseConfig()
TOUCH_AFTER = float(POLICY.touch_granularity_s)
DEADLINE_S = QueueConfig().deadline_s
#: with the bound, the cost at 150 prefixes over the cost at 3 at most
GOAL = 1.25
BOUNDED, UNBOUNDED = 4, 1000
SMALL, LARGE = 3, 150
#: a login every five hours: 150 prefixes in a month
STEP_S = 5 * 3600.0
START = 1_764_000_000.0
#: the first pool of the timed logins, above every pool of a history
TIMED_POOLS = 1000


def policy(history: History, origin: Origin, at: float, client: Client | None) -> Decision:
    """The service's decision (recorder.py), with the default policy and compromise check."""
    return decide(history, origin, at, POLICY, client, COMPROMISE)


def origin(pool: int) -> Origin:
    """The ``pool``-th /24 of one mobile carrier in one country."""
    net = f"11.{pool // 256 % 256}.{pool % 256}"
    return Origin(f"{net}.77", AddressClass.GLOBAL, f"{net}.0/24", "JP", 64999, "Mobile JP")


@dataclass
class Case:
    keep: int
    prefixes: int
    path: Path
    store: Store | None = None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rows_built: tuple[int, float, int] = (0, 0.0, 0)
    rows_after: tuple[int, float, int] = (0, 0.0, 0)

    @property
    def label(self) -> str:
        bound = "bounded" if self.keep == BOUNDED else "unbounded"
        return f"{bound} ({self.keep}), {self.prefixes} prefixes"


async def record(store: Store, items: list[tuple[str, int, float]], batch: int) -> int:
    """Record ``items`` (account, pool, time), ``batch`` at once; how many of them wrote."""
    wrote = 0
    for start in range(0, len(items), batch):
        logins = [
            SuccessfulLogin(account, account, "imap", o.address, o, at)
            for account, o, at in ((a, origin(p), t) for a, p, t in items[start : start + batch])
        ]
        outcomes = await asyncio.gather(
            *(
                store.record_success(
                    login, policy, (), touch_after=TOUCH_AFTER, deadline_s=DEADLINE_S
                )
                for login in logins
            )
        )
        wrote += sum(outcome.wrote for outcome in outcomes)
    return wrote


def rows_per_account(path: Path) -> tuple[int, float, int]:
    """(min, mean, max) of ``SELECT count(*) FROM origins`` per account."""
    with sqlite3.connect(path) as conn:
        counts = [n for (n,) in conn.execute("SELECT count(*) FROM origins GROUP BY account")]
    return min(counts), statistics.fmean(counts), max(counts)


async def build(case: Case, accounts: int) -> float:
    """The case's history; the seconds it took. An account's logins are queued together (up
    to the largest group commit), oldest first, so one batch reads its rows once."""
    assert case.store is not None
    first = LARGE - case.prefixes  # every history ends at the same moment
    items = [
        (f"user{a}@example.jp", p, START + (first + p) * STEP_S + a)
        for a in range(accounts)
        for p in range(case.prefixes)
    ]
    started = time.perf_counter()
    await record(case.store, items, 256)
    return time.perf_counter() - started


async def turn(case: Case, items: list[tuple[str, int, float]], batch: int) -> tuple[float, float]:
    """Wall and CPU seconds of recording ``items``, every one of which must write."""
    assert case.store is not None
    wall, cpu = time.perf_counter(), time.process_time()
    wrote = await record(case.store, items, batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if wrote != len(items):
        sys.exit(f"{case.label}: {len(items) - wrote} of {len(items)} timed logins wrote nothing")
    return wall, cpu


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    cases = [
        Case(keep, prefixes, directory / f"keep{keep}-prefixes{prefixes}.sqlite3")
        for keep in (BOUNDED, UNBOUNDED)
        for prefixes in (SMALL, LARGE)
    ]
    built: dict[str, float] = {}
    try:
        for case in cases:
            case.store = await open_store(
                StorageConfig(
                    path=str(case.path),
                    origins_per_provider=case.keep,
                    group_commit_wait_ms=args.wait_ms,
                )
            )
            built[case.label] = await build(case, args.accounts)
            case.rows_built = rows_per_account(case.path)
        if not args.json:
            spent = ", ".join(f"{label} {s:.1f}s" for label, s in built.items())
            print(f"histories built ({spent})", flush=True)
        later = START + (LARGE + 1) * STEP_S
        for round_ in range(args.rounds + 1):  # round 0 warms up, untimed
            # the round's logins, the same accounts and times for every case
            first = round_ * args.logins
            at = later + round_ * STEP_S
            items = [
                (f"user{(first + i) % args.accounts}@example.jp", TIMED_POOLS + first + i, at + i)
                for i in range(args.logins)
            ]
            shift = round_ % len(cases)
            for case in cases[shift:] + cases[:shift]:
                wall, cpu = await turn(case, items, args.batch)
                if round_:
                    case.wall.append(wall / args.logins * 1e6)
                    case.cpu.append(cpu / args.logins * 1e6)
    finally:
        for case in cases:
            if case.store is not None:
                await case.store.close()
    for case in cases:
        case.rows_after = rows_per_account(case.path)

    def ratio(keep: int, figures: str) -> float:
        small, large = (
            next(c for c in cases if c.keep == keep and c.prefixes == n) for n in (SMALL, LARGE)
        )
        pairs = zip(getattr(large, figures), getattr(small, figures), strict=True)
        return float(statistics.median(a / b for a, b in pairs))

    return {
        "accounts": args.accounts,
        "logins_per_turn": args.logins,
        "rounds": args.rounds,
        "batch": args.batch,
        "wait_ms": args.wait_ms,
        "build_s": built,
        "cases": [
            {
                "keep": c.keep,
                "prefixes": c.prefixes,
                "rows_after_build": c.rows_built,
                "rows_after_timed": c.rows_after,
                "us_per_login": statistics.median(c.wall),
                "cpu_us_per_login": statistics.median(c.cpu),
                "turns_us": c.wall,
            }
            for c in cases
        ],
        "bounded_ratio": ratio(BOUNDED, "wall"),
        "bounded_cpu_ratio": ratio(BOUNDED, "cpu"),
        "unbounded_ratio": ratio(UNBOUNDED, "wall"),
        "unbounded_cpu_ratio": ratio(UNBOUNDED, "cpu"),
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"SQLite store, {result['accounts']} accounts of one provider and country;"
        f" {result['rounds']} rounds of {result['logins_per_turn']} timed logins per case, each"
        f" from a new prefix, {result['batch']} at once (group commit wait"
        f" {result['wait_ms']:g} ms), {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'bound':>6} {'prefixes':>9} {'rows/account built':>19} {'rows/account after':>19}"
        f" {'µs/login':>9} {'CPU µs/login':>13}"
    )
    for c in result["cases"]:
        built = "{0}-{2} (mean {1:.1f})".format(*c["rows_after_build"])
        after = "{0}-{2} (mean {1:.1f})".format(*c["rows_after_timed"])
        print(
            f"{c['keep']:>6} {c['prefixes']:>9} {built:>19} {after:>19}"
            f" {c['us_per_login']:>9.1f} {c['cpu_us_per_login']:>13.1f}"
        )
    bounded_max = max(c["rows_after_timed"][2] for c in result["cases"] if c["keep"] == BOUNDED)
    print(
        f"the bound holds: at most {bounded_max} rows per account read with"
        f" origins_per_provider = {BOUNDED}: {'yes' if bounded_max <= BOUNDED else 'NO'}"
    )
    bounded = result["bounded_ratio"]
    verdict = "met" if bounded <= GOAL and bounded_max <= BOUNDED else "missed"
    print(
        f"goal: bounded: cost at {LARGE} prefixes within {GOAL}x of {SMALL} prefixes: {verdict}"
        f" ({bounded:.2f}x; CPU {result['bounded_cpu_ratio']:.2f}x; median of the rounds' ratios)"
    )
    print(
        f"unbounded (every prefix kept, as before): {result['unbounded_ratio']:.2f}x"
        f" (CPU {result['unbounded_cpu_ratio']:.2f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200, help="accounts per case")
    parser.add_argument("--logins", type=int, default=100, help="timed logins per case per round")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds (after a warm-up)")
    parser.add_argument("--batch", type=int, default=32, help="logins queued at once")
    parser.add_argument("--wait-ms", type=float, default=0.0, help="group_commit_wait_ms")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not 1 <= args.batch <= min(args.accounts, 256):
        parser.error("--batch: 1 to the smaller of --accounts and 256 (distinct accounts)")
    if args.logins < 1 or args.rounds < 1 or (args.rounds + 1) * args.logins > 60_000:
        parser.error("--logins and --rounds: at least 1, and (rounds + 1) * logins <= 60,000")
    with tempfile.TemporaryDirectory(prefix="policy-server-prefixes-") as name:
        result = asyncio.run(run(args, Path(name)))
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0 if result["bounded_ratio"] <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
