"""``allow`` throughput with many active blocks ("It wasn't me"), side by side with none.

Two services over the same generated history (bench/workload.py), one of them with ``--blocks``
active blocks (10,000 by default), share one CPU and are driven at once, each by its own wrk
on the other CPU, with the same allow-only workload, then with the full one (allow, allow,
report): the scheduler gives each the same CPU time, so the ratio of their throughputs is the
ratio of their costs per request, whatever else the machine does meanwhile. The median of
``--rounds`` such turns is reported.

The owners with a block are drawn at random from the history (``--busiest``: the accounts that
log in most, where nearly every request is one of theirs, the worst case). Each block names a
provider in a country its account never logs in from, so every request of a blocked account
takes the whole check (the account's blocks, its origin placed, every target looked up) and
still answers status 0, as a real day's logins do; before the runs one login from a blocked
origin must answer status -1.

Usage: .venv/bin/python bench/blocks.py [--blocks 10000] [--accounts 100000] [--busiest]
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import (  # noqa: E402
    free_port,
    service_config,
    start,
    stop,
    wait_port,
    wrk_side_by_side,
)
from workload import (  # noqa: E402
    NETWORKS,
    Request,
    account_networks,
    drop_schema_pg,
    network,
    requests,
    write_geo,
    write_history,
    write_history_pg,
    write_wrk_script,
)

#: the ratio to none that ``allow`` must keep with the blocks
GOAL = 0.95


def blocked_network(i: int) -> int:
    """The network account ``i`` gets blocked: another country, a provider of it far from any
    the workload makes the account log in from (see ``workload.logins``)."""
    return (account_networks(i)[0] + 8 + 16 * 100) % NETWORKS


def account_of(req: Request) -> int:
    return int(json.loads(req.body)["login"].removeprefix("user").partition("@")[0])


def chosen_accounts(count: int, accounts: int, load: list[Request], busiest: bool) -> list[int]:
    """The accounts that get a block: ``count`` drawn at random, as owners who answered "It
    wasn't me" are; or (``busiest``) those the workload logs in most, the worst case, where
    nearly every login is of an account with a block."""
    if not busiest:
        return random.Random(11).sample(range(accounts), count)
    seen = dict.fromkeys(account_of(req) for req in load)
    order = list(seen) + [i for i in range(accounts) if i not in seen]
    return order[:count]


async def add_blocks(config: Any, chosen: list[int]) -> None:
    """One operator block per chosen account, through the store as ``blocks add`` writes it."""
    from policy_server.store import open_store
    from policy_server.store.base import Block, BlockKind, BlockTarget

    store = await open_store(config)
    try:
        now = time.time()
        for i in chosen:
            _, country, asn = network(blocked_network(i))
            target = BlockTarget(BlockKind.PROVIDER, f"AS{asn}", country)
            await store.add_block(Block(f"user{i}@example.jp", target, now, now + 7 * 86400), now)
    finally:
        await store.close()


def allow_status(url: str, login: str, remote: str) -> int:
    body = json.dumps({"login": login, "remote": remote, "protocol": "imap"}).encode()
    req = urllib.request.Request(f"{url}?command=allow", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.loads(resp.read())["status"])


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument(
        "--busiest",
        action="store_true",
        help="block the accounts that log in most (the worst case), not accounts at random",
    )
    parser.add_argument("--rounds", type=int, default=10, help="turns of each service per mix")
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--no-pin", action="store_true", help="leave the CPUs to the scheduler (not side by side)"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if args.blocks > args.accounts:
        sys.exit("--blocks: one block per account, so at most --accounts")
    from policy_server.config import StorageConfig

    pg = args.backend == "postgres"
    # both services on one CPU, the load on the others
    cpus = sorted(os.sched_getaffinity(0))
    pins = ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 and not args.no_pin else None
    tag = f"bench_blocks_{os.getpid()}"
    base = Path(tempfile.mkdtemp(prefix="policy-server-blocks-"))
    procs = []
    try:
        geo = write_geo(base / "geo")
        dbs: dict[str, Path | str] = {}
        for label in ("none", "blocks"):
            if pg:
                dbs[label] = f"{tag}_{label}"
                asyncio.run(write_history_pg(args.dsn, str(dbs[label]), args.accounts))
            else:
                dbs[label] = base / f"{label}.sqlite3"
                write_history(Path(dbs[label]), args.accounts)
        allow_load = requests(args.accounts, 200_000, allow_only=True)
        chosen = chosen_accounts(args.blocks, args.accounts, allow_load, args.busiest)
        blocked_accounts = set(chosen)
        share = sum(account_of(req) in blocked_accounts for req in allow_load) / len(allow_load)
        storage = (
            StorageConfig(backend="postgres", dsn=args.dsn, schema=str(dbs["blocks"]))
            if pg
            else StorageConfig(path=str(dbs["blocks"]))
        )
        t = time.monotonic()
        asyncio.run(add_blocks(storage, chosen))
        print(f"{len(chosen)} blocks added in {time.monotonic() - t:.1f}s", flush=True)

        sink_port = free_port()
        procs.append(
            start([sys.executable, str(HERE / "peers.py"), "sink", str(sink_port)], base / "sink")
        )
        wait_port(sink_port)
        sink = f"http://127.0.0.1:{sink_port}/notify"
        urls: dict[str, str] = {}
        metrics_ports: dict[str, int] = {}
        for label, db in dbs.items():
            port, metrics_ports[label] = free_port(), free_port()
            dsn = args.dsn if pg else ""
            conf = service_config(
                base / f"{label}.toml", port, db, geo, sink, dsn, metrics_ports[label]
            )
            serve = [sys.executable, "-m", "policy_server", "serve", "-c", str(conf)]
            procs.append(start([*serve, "--log-level", "warning"], base / f"{label}.log"))
            if pins is not None:
                os.sched_setaffinity(procs[-1].pid, pins[0])
            wait_port(port)
            wait_port(metrics_ports[label])
            urls[label] = f"http://127.0.0.1:{port}/"

        # the blocks are in force: one login of a blocked account from its blocked provider is
        # refused, the same account from home is not, and the service holds every block
        first = chosen[0]
        net, _, _ = network(blocked_network(first))
        home, _, _ = network(account_networks(first)[0])
        login = f"user{first}@example.jp"
        checks = {
            "blocked origin": allow_status(urls["blocks"], login, str(net.network_address + 9)),
            "home": allow_status(urls["blocks"], login, str(home.network_address + 9)),
            "without blocks": allow_status(urls["none"], login, str(net.network_address + 9)),
        }
        active = metric(metrics_ports["blocks"], "policy_server_blocks_active")
        print(f"allow answers: {checks}; active blocks: {active:.0f}", flush=True)
        if checks != {"blocked origin": -1, "home": 0, "without blocks": 0}:
            sys.exit("the blocks are not in force as they should be")
        if active != len(chosen):
            sys.exit(f"the service holds {active:.0f} blocks, not {len(chosen)}")

        results: dict[str, Any] = {
            "blocks": len(chosen),
            "accounts": args.accounts,
            "share": share,
        }
        for mix in ("allow", "full"):
            script = base / f"{mix}.lua"
            load = allow_load if mix == "allow" else requests(args.accounts, 600_000)
            write_wrk_script(script, load)
            runs: dict[str, list[dict[str, float]]] = {"none": [], "blocks": []}
            for _ in range(args.rounds):
                # both at once: the two services share one CPU, so whatever else the machine
                # does weighs on both alike, and each serves as much as its requests allow
                none, blocked = wrk_side_by_side(
                    [urls["none"], urls["blocks"]],
                    script,
                    args.duration,
                    args.connections,
                    None if pins is None else pins[1],
                )
                runs["none"].append(none)
                runs["blocks"].append(blocked)
            results[mix] = runs
            print(f"{mix}: {json.dumps(runs)}", flush=True)
        report(results, args)
    finally:
        for proc in procs:
            stop(proc)
        if pg:
            for label in ("none", "blocks"):
                asyncio.run(drop_schema_pg(args.dsn, f"{tag}_{label}"))
        shutil.rmtree(base, ignore_errors=True)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    chosen = "the busiest" if args.busiest else "at random"
    print(
        f"{args.backend} store; {args.accounts} accounts, {results['blocks']} of them ({chosen})"
        f" with a block, {results['share']:.0%} of the allow requests theirs;"
        f" {args.rounds} turns of {args.duration}s each, wrk -t1 -c{args.connections}"
        f" each, both at once{'' if args.no_pin else ' with both services on one CPU'}"
    )
    ratios: dict[str, float] = {}
    for mix in ("allow", "full"):
        rps = {label: [r["rps"] for r in results[mix][label]] for label in ("none", "blocks")}
        p99 = {label: [r["p99"] for r in results[mix][label]] for label in ("none", "blocks")}
        # the median of the turns' ratios
        pairs = zip(rps["blocks"], rps["none"], strict=True)
        ratios[mix] = statistics.median(b / n for b, n in pairs)
        print(
            f"{mix:5} workload: none {statistics.median(rps['none']):.0f} req/s"
            f" (p99 {statistics.median(p99['none']):.2f} ms),"
            f" {results['blocks']} blocks {statistics.median(rps['blocks']):.0f} req/s"
            f" (p99 {statistics.median(p99['blocks']):.2f} ms); ratio {ratios[mix]:.3f}"
            f"  [turns: none {', '.join(f'{v:.0f}' for v in rps['none'])};"
            f" blocks {', '.join(f'{v:.0f}' for v in rps['blocks'])}]"
        )
    verdict = "met" if ratios["allow"] >= GOAL else "missed"
    print(
        f"goal: allow with {results['blocks']} active blocks within 5% of none"
        f" (ratio >= {GOAL}): {verdict} ({ratios['allow']:.3f})"
    )


if __name__ == "__main__":
    main()
