"""The cost of a login that writes, against accounts holding 3 and 150 prefixes of a carrier.

A phone wandering through its carrier's address pools collects a new /24 every few hours. Every
login that writes reads all of its account's origin rows, so with every prefix kept the cost per
login grows with the pools; ``[storage] origins_per_provider`` (4) bounds the rows. In one run,
through the real SQLite store and its group commit, for the bound and for the old behaviour (a
bound of 1,000, never reached):

1. N accounts are given 3, resp. 150, prefixes of one provider in one country;
2. M further logins, each from yet another new prefix of that provider (so each one writes),
   are timed; the cases alternate, twice each, and the faster round counts.

Usage: .venv/bin/python bench/prefixes.py [--accounts 200] [--logins 2000]
Goal: with the bound, the cost at 150 prefixes is within 1.25x of the cost at 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from policy_server.client import Client
from policy_server.config import PolicyConfig, StorageConfig
from policy_server.model import AddressClass, History, Origin
from policy_server.policy import Decision, decide
from policy_server.store import open_store
from policy_server.store.base import SuccessfulLogin

POLICY = PolicyConfig()
GOAL = 1.25


def policy(history: History, origin: Origin, at: float, client: Client | None) -> Decision:
    return decide(history, origin, at, POLICY, client)


def origin(pool: int) -> Origin:
    prefix = f"10.{pool // 256}.{pool % 256}.0/24"
    return Origin(prefix.split("/")[0], AddressClass.GLOBAL, prefix, "JP", 64999, "Mobile JP")


async def logins(path: Path, keep: int, items: list[tuple[str, int, float]]) -> float:
    """Record ``items`` (account, pool, time) in batches of 64 at once; the seconds it took."""
    store = await open_store(StorageConfig(path=str(path), origins_per_provider=keep))
    try:
        started = time.perf_counter()
        for start in range(0, len(items), 64):
            await asyncio.gather(
                *(
                    store.record_success(
                        SuccessfulLogin(account, account, "imap", "", origin(pool), at),
                        policy,
                        (),
                        touch_after=3600.0,
                        deadline_s=86400.0,
                    )
                    for account, pool, at in items[start : start + 64]
                )
            )
        return time.perf_counter() - started
    finally:
        await store.close()


def rows_per_account(path: Path) -> float:
    with sqlite3.connect(path) as conn:
        ((rows, accounts),) = conn.execute(
            "SELECT count(*), count(DISTINCT account) FROM origins"
        ).fetchall()
    return float(rows) / max(1, int(accounts))


async def case(
    directory: Path, keep: int, prefixes: int, accounts: int, count: int
) -> dict[str, Any]:
    path = directory / f"keep{keep}-prefixes{prefixes}.sqlite3"
    at = 1_764_000_000.0
    # the history: each account from ``prefixes`` pools, a login every five hours
    build = [(f"user{a}", p, at + p * 18_000.0) for p in range(prefixes) for a in range(accounts)]
    await logins(path, keep, build)
    later = at + prefixes * 18_000.0
    best = float("inf")
    for round_ in range(2):
        timed = [
            (f"user{i % accounts}", 1000 + round_ * count + i, later + round_ * 36_000.0 + i)
            for i in range(count)
        ]
        best = min(best, await logins(path, keep, timed))
    return {
        "keep": keep,
        "prefixes": prefixes,
        "rows_per_account": rows_per_account(path),
        "us_per_login": best / count * 1e6,
    }


async def run(accounts: int, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="policy-server-prefixes-") as directory:
        results = [
            await case(Path(directory), keep, prefixes, accounts, count)
            for keep in (4, 1000)
            for prefixes in (3, 150)
        ]
    cost = {(r["keep"], r["prefixes"]): r["us_per_login"] for r in results}
    return {
        "accounts": accounts,
        "logins": count,
        "cases": results,
        "bounded_ratio": cost[(4, 150)] / cost[(4, 3)],
        "unbounded_ratio": cost[(1000, 150)] / cost[(1000, 3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--logins", type=int, default=2000, help="timed logins per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.accounts, args.logins))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.accounts} accounts, {args.logins} timed logins per round (SQLite)")
    print(f"{'bound':>6} {'prefixes':>9} {'rows/account':>13} {'us/login':>9}")
    for r in result["cases"]:
        print(
            f"{r['keep']:>6} {r['prefixes']:>9} {r['rows_per_account']:>13.1f}"
            f" {r['us_per_login']:>9.1f}"
        )
    bounded, unbounded = result["bounded_ratio"], result["unbounded_ratio"]
    verdict = "met" if bounded <= GOAL else "missed"
    print(f"bounded: 150 prefixes cost {bounded:.2f}x of 3 (goal <= {GOAL}x): {verdict}")
    print(f"unbounded (every prefix kept): {unbounded:.2f}x")


if __name__ == "__main__":
    main()
