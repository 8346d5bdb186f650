"""Throughput, latency, memory and delivery rate of the service, each judged against its goal.

In one run, against the same generated inputs (see bench/workload.py), and with the limit (a
bare aiohttp handler returning the constant answer, bench/peers.py) measured beside the
service so that every throughput is also a ratio:

1. Saturation: wrk (``-t1 -c32``) as fast as it goes, against the bare handler and then the
   service, for three workloads: "report" (a report per login, what dovecot-example.conf
   sends), "full" (allow, allow, report: the allow checks on too) and "allow" (the checks
   alone). Requests/s and wrk's p99 of each.
2. Fixed rate: an open-loop asyncio client (``open_loop``) at ``--rate`` requests/s (2,000) of
   the full workload, measuring each request from its scheduled send time (no coordinated
   omission), against both; the service's worker delivers the notices the workload makes
   (new providers, new countries) to a local webhook sink meanwhile. p50, p99, p99.9.
3. Both of the above with the large history (``--accounts``, 1,000,000) and the small one
   (``--small``, 1,000), for the ratio "large over small"; after them the resident
   memory (VmRSS) of the processes that answer Dovecot (the goal; summed with ``--workers``),
   and of all the service's processes (a supervisor and a delivery process included).
4. Delivery: a queue of ``--notices`` due notices written straight into the store's tables of a
   history of ``--small`` accounts, emptied by a service into the sink; the rate counts from
   the moment the service listens to the last notice received. Meanwhile the open-loop client
   sends ``--drain-rate`` requests/s of reports of known-origin logins of that history (logins
   that notify nobody, so the sink counts the queue alone) until the queue is empty: the login
   p99 "while delivering". Then a second service, on a history made the same way with an empty
   queue, gets the same traffic for as long as the drain took: the login p99 "quiet".
5. Day-one burst: a service on a fresh history of ``--small`` accounts gets ``--burst-rate``
   requests/s of the same ordinary known-origin reports for ``--burst-seconds`` (quiet), then
   the same traffic again with, from a second open-loop client at the same time, ``--burst``
   first logins (accounts with no history, each making a notice delivered to the sink
   meanwhile) spread evenly over ``--burst-seconds``. The goal compares the p99 of the ordinary
   requests during the burst with their quiet p99; the first logins' own p99 is printed too.

Every service runs with ``[delivery] hold_s = 0`` (deliver at once) and ``[breaker] enabled =
false`` (the synthetic mix would trip it); the service and the bare handler both make their
event loop with ``policy_server.service.eventloop.loop_factory()``, as does this process for its
load client. At the end: a table of the goals, each met or missed with its figures, and one
JSON line with every figure, to compare runs.

Usage: .venv/bin/python bench/throughput.py [--accounts 1000000] [--duration 15]
       [--backend postgres] [--workers N] [--delivery process]; a short try: --accounts 5000
       --small 1000 --duration 3 --notices 5000 --burst 3000 --burst-seconds 5
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import (  # noqa: E402
    MODES,
    Request,
    drop_schema_pg,
    first_logins,
    requests,
    write_geo,
    write_history,
    write_history_pg,
    write_wrk_script,
)

from policy_server.service import eventloop  # noqa: E402

T = TypeVar("T")

#: requests in each workload's wrk script (the full workload: 200,000 logins)
SCRIPT_REQUESTS = {"report": 200_000, "full": 600_000, "allow": 200_000}
#: how the goals' table names the workloads
MODE_NAMES = {"report": "report-only", "full": "full", "allow": "allow alone"}
#: the goals (see ``goals``)
THROUGHPUT_GOAL = {"sqlite": 0.80, "postgres": 0.50}
SATURATION_P99_FACTOR = 3.0
RATE_P99_MS, RATE_P999_MS = 5.0, 20.0
SIZE_GOAL = 0.90
RSS_GOAL_MB = 200.0
DELIVERY_GOAL = 5000.0
DRAIN_P99_FACTOR = 1.5
BURST_P99_FACTOR = 5.0
#: the longest a drain, or the delivery of a burst's notices after it, is waited for
DRAIN_TIMEOUT_S = 300.0
BURST_SETTLE_S = 30.0


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    now = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return now / 1024, peak / 1024


def service_rss_mb(pid: int) -> tuple[float, float, float]:
    """(current, peak) resident memory of the processes that answer Dovecot, in MB: the service
    itself, or under a supervisor (``--workers``, ``--delivery process``) its ``serve``
    processes, summed; then the current memory of all of them, supervisor and delivery process
    included."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    answering = [c for c in children if "serve" in cmdline(c)] or [pid]
    figures = [rss_mb(p) for p in answering]
    total = sum(rss_mb(p)[0] for p in {pid, *children})
    return sum(f[0] for f in figures), sum(f[1] for f in figures), total


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


# --- wrk ----------------------------------------------------------------------------------


def wrk(
    url: str, script: Path, duration: int, connections: int, cpus: set[int] | None = None
) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) of one wrk run (on ``cpus`` when given)."""
    return wrk_side_by_side([url], script, duration, connections, cpus)[0]


def wrk_side_by_side(
    urls: list[str], script: Path, duration: int, connections: int, cpus: set[int] | None = None
) -> list[dict[str, float]]:
    """One wrk per URL, all at once (each with ``connections``), on ``cpus`` when given; the
    figures of each, as ``wrk`` gives them."""
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    load = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script)]
    runs = [subprocess.Popen([*pin, *load, url], stdout=subprocess.PIPE, text=True) for url in urls]
    outputs = [run.communicate()[0] for run in runs]
    for run in runs:
        if run.returncode != 0:
            raise subprocess.CalledProcessError(run.returncode, run.args)
    return [wrk_figures(out) for out in outputs]


def wrk_figures(out: str) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms) and non-2xx answers from wrk's output."""
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if match:
            value = float(match.group(1))
            figures[f"p{pct}"] = value * {"us": 0.001, "ms": 1, "s": 1000}[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non2xx"] = float(errors.group(1)) if errors else 0.0
    return figures


# --- the open-loop client -----------------------------------------------------------------


def percentiles(latencies: list[float], sent: int, failures: int) -> dict[str, float]:
    """p50, p99, p99.9 and max (ms) of ``latencies`` (seconds); NaN when there are none."""
    latencies = sorted(latencies)

    def pct(q: float) -> float:
        if not latencies:
            return math.nan
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "sent": float(sent),
        "failures": float(failures),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "max": pct(1.0),
    }


async def open_loop(
    url: str,
    bodies: list[tuple[str, str]],
    rate: float,
    seconds: float,
    until: asyncio.Event | None = None,
) -> dict[str, float]:
    """Send ``bodies`` (cycling) at a fixed rate for ``seconds``, or until ``until`` is set,
    whatever the answers do; each latency counts from the request's scheduled send time."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    # not loop.time(): uvloop's counts whole milliseconds
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        start_at = clock() + 0.2
        tasks: list[asyncio.Task[None]] = []

        async def one(i: int, scheduled: float) -> None:
            nonlocal failures
            command, body = bodies[i % len(bodies)]
            try:
                async with session.post(
                    f"{url}?command={command}",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
            except aiohttp.ClientError:
                failures += 1
            latencies.append(clock() - scheduled)

        for i in range(round(rate * seconds)):
            if until is not None and until.is_set():
                break
            scheduled = start_at + i / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    return percentiles(latencies, len(tasks), failures)


async def gathered(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """The results of ``coroutines`` run concurrently."""
    return list(await asyncio.gather(*coroutines))


def under_load(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a load (open-loop clients and what watches them) on the service's kind of event
    loop, with the garbage collector held off: this process holds hundreds of thousands of
    request bodies, and a full collection of them would stall the client for a tenth of a
    second and show up as the server's latency."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return eventloop.run(coroutine)
    finally:
        gc.enable()
        gc.unfreeze()


def pairs(reqs: list[Request]) -> list[tuple[str, str]]:
    return [(r.command, r.body) for r in reqs]


# --- the sink and the queue ---------------------------------------------------------------


def sink_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
        return int(json.loads(resp.read())["count"])


async def watch_sink(port: int, target: int, reached: asyncio.Event, give_up_s: float) -> float:
    """Poll the sink until it has counted ``target`` deliveries (or ``give_up_s`` passed); set
    ``reached`` then, and return the seconds it took."""
    import aiohttp

    began = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - began < give_up_s:
            async with session.get(f"http://127.0.0.1:{port}/count") as response:
                if int((await response.json())["count"]) >= target:
                    break
            await asyncio.sleep(0.05)
    reached.set()
    return time.perf_counter() - began


def queued_rows(count: int, now: float) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """``count`` notices due now: for each, its ``notices`` row (id, account, created, reasons,
    payload, origin_key) and its ``deliveries`` row (notice_id, channel, account, status,
    next_attempt, deadline, created, updated)."""
    for i in range(count):
        payload = {
            "id": f"n{i}", "login": f"bulk{i}", "reasons": ["new_country"], "protocol": "imap",
            "remote": "11.0.0.1", "country": "US", "asn": 65001, "as_org": "Provider 65001",
            "time": "2026-11-29T00:00:00+00:00", "account": f"bulk{i}",
            "prefix": "11.0.0.0/24", "history": [],
        }  # fmt: skip
        notice = (f"n{i}", f"bulk{i}", now, '["new_country"]', json.dumps(payload), "")
        delivery = (f"n{i}", "webhook-0", f"bulk{i}", "queued", now, now + 86400, now, now)
        yield notice, delivery


NOTICE_COLUMNS = "notices (id, account, created, reasons, payload, origin_key)"
DELIVERY_COLUMNS = (
    "deliveries (notice_id, channel, account, status, next_attempt, deadline, created, updated)"
)


def fill_queue(db: Path, count: int) -> None:
    """``count`` notices due now, straight into the queue tables of a SQLite store."""
    notices, deliveries = zip(*queued_rows(count, time.time()), strict=True)
    with sqlite3.connect(db) as conn:
        conn.executemany(f"INSERT INTO {NOTICE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?)", notices)
        conn.executemany(
            f"INSERT INTO {DELIVERY_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", deliveries
        )


async def fill_queue_pg(dsn: str, schema: str, count: int) -> None:
    """The same in a PostgreSQL schema."""
    import asyncpg

    notices, deliveries = zip(*queued_rows(count, time.time()), strict=True)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.executemany(
            f"INSERT INTO {NOTICE_COLUMNS} VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
            notices,
        )
        await conn.executemany(
            f"INSERT INTO {DELIVERY_COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", deliveries
        )
    finally:
        await conn.close()


# --- services -----------------------------------------------------------------------------


def service_config(
    path: Path,
    port: int,
    db: Path | str,
    geo: dict[str, Path],
    sink: str,
    dsn: str = "",
    metrics_port: int | None = None,
) -> Path:
    """The service's config; ``db`` is a SQLite file, or a PostgreSQL schema with ``dsn``;
    /metrics on ``metrics_port`` (a free port when None)."""
    storage = f'backend = "postgres"\ndsn = "{dsn}"\nschema = "{db}"' if dsn else f'path = "{db}"'
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
[geoip]
country_db = "{geo["country_mmdb"]}"
asn_db = "{geo["asn_mmdb"]}"
bundled = false
[storage]
{storage}
[delivery]
# deliver while the load runs, not a minute later
hold_s = 0
[breaker]
# the synthetic mix (5% of logins unusual, all day long) would trip it within seconds
enabled = false
[metrics]
# on, as in production: its counters are part of every request's cost
listen = "127.0.0.1:{metrics_port or free_port()}"
[[channels]]
type = "webhook"
url = "{sink}"
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Service:
    """A running ``policy-server serve`` and where it answers."""

    proc: subprocess.Popen[bytes]
    url: str
    db: Path | str


@dataclass
class Bench:
    """What every measurement shares: the options, the files, the peers, what to clean up."""

    args: argparse.Namespace
    base: Path
    geo: dict[str, Path] = field(default_factory=dict)
    sink_port: int = 0
    bare_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)

    @property
    def pg(self) -> bool:
        return bool(self.args.backend == "postgres")

    def history(self, name: str, accounts: int) -> tuple[Path | str, int]:
        """A store named ``name`` with a history of ``accounts`` accounts (a SQLite file, or
        a PostgreSQL schema); and its number of origins."""
        if self.pg:
            schema = f"bench_{os.getpid()}_{name}"
            self.schemas.append(schema)
            return schema, asyncio.run(write_history_pg(self.args.dsn, schema, accounts))
        db = self.base / f"{name}.sqlite3"
        return db, write_history(db, accounts)

    def fill(self, db: Path | str, count: int) -> None:
        """``count`` due notices into the queue of store ``db``."""
        if self.pg:
            asyncio.run(fill_queue_pg(self.args.dsn, str(db), count))
        else:
            fill_queue(Path(db), count)

    def serve(self, name: str, db: Path | str) -> Service:
        """Start the service (``serve --workers N``) on store ``db``; return once it listens."""
        port = free_port()
        sink = f"http://127.0.0.1:{self.sink_port}/notify"
        dsn = self.args.dsn if self.pg else ""
        conf = service_config(self.base / f"{name}.toml", port, db, self.geo, sink, dsn)
        command = [sys.executable, "-m", "policy_server", "serve", "-c", str(conf)]
        command += ["--log-level", "warning"]
        if self.args.workers > 1:
            command += ["--workers", str(self.args.workers)]
        if self.args.delivery == "process":
            command += ["--delivery", "process"]
        proc = start(command, self.base / f"{name}.log")
        self.procs.append(proc)
        wait_port(port)
        return Service(proc, f"http://127.0.0.1:{port}/", db)

    def stop(self, service: Service) -> None:
        stop(service.proc)
        if self.pg and Path(str(service.db)).exists():
            sys.exit(f"the service wrote a SQLite file {service.db}: it did not run on PostgreSQL")

    def start_peers(self) -> None:
        """The webhook sink and the bare handler (bench/peers.py)."""
        self.sink_port, bare_port = free_port(), free_port()
        for kind, port in (("sink", self.sink_port), ("bare", bare_port)):
            command = [sys.executable, str(HERE / "peers.py"), kind, str(port)]
            self.procs.append(start(command, self.base / f"{kind}.log"))
        wait_port(self.sink_port)
        wait_port(bare_port)
        self.bare_url = f"http://127.0.0.1:{bare_port}/"

    def cleanup(self) -> None:
        for proc in self.procs:
            stop(proc)
        for schema in self.schemas:
            asyncio.run(drop_schema_pg(self.args.dsn, schema))


# --- the measurements ---------------------------------------------------------------------


def saturation(bench: Bench, url: str, scripts: dict[str, Path]) -> dict[str, Any]:
    """wrk against the bare handler, then the service, for each workload in turn."""
    args = bench.args
    row: dict[str, Any] = {}
    for mode in MODES:
        for who, target in (("bare", bench.bare_url), ("service", url)):
            row[f"{who}_{mode}"] = wrk(target, scripts[mode], args.duration, args.connections)
    return row


def workload_scripts(
    bench: Bench, label: str, accounts: int
) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """A wrk script per workload for a history of ``accounts``, and the fixed rate's bodies
    (the second half of the full workload's logins)."""
    scripts: dict[str, Path] = {}
    fixed: list[tuple[str, str]] = []
    for mode in MODES:
        reqs = requests(accounts, SCRIPT_REQUESTS[mode], mode=mode)
        scripts[mode] = bench.base / f"{mode}-{label}.lua"
        write_wrk_script(scripts[mode], reqs)
        if mode == "full":
            fixed = pairs(reqs[len(reqs) // 2 :])
    return scripts, fixed


def history_turn(bench: Bench, label: str, accounts: int) -> dict[str, Any]:
    """Saturation and fixed rate, bare and service, with a history of ``accounts``, then the
    service's memory."""
    args = bench.args
    db, origins = bench.history(label, accounts)
    print(f"[{label}] history of {accounts} accounts, {origins} origins", flush=True)
    scripts, fixed = workload_scripts(bench, label, accounts)
    service = bench.serve(label, db)
    row: dict[str, Any] = {"origins": origins}
    before = sink_count(bench.sink_port)
    row.update(saturation(bench, service.url, scripts))
    for who, target in (("bare", bench.bare_url), ("service", service.url)):
        row[f"{who}_rate"] = under_load(open_loop(target, fixed, args.rate, args.duration))
    time.sleep(1)
    row["notices_delivered_during_runs"] = sink_count(bench.sink_port) - before
    row["rss_mb"], row["peak_rss_mb"], row["rss_all_mb"] = service_rss_mb(service.proc.pid)
    bench.stop(service)
    print(f"[{label}] {json.dumps(row)}", flush=True)
    return row


def ordinary_traffic(accounts: int) -> list[tuple[str, str]]:
    """Reports of known-origin logins of a history of ``accounts``: what notifies nobody."""
    return pairs(requests(accounts, 100_000, mode="report", kinds={"known"}))


def delivery_turn(bench: Bench, traffic: list[tuple[str, str]]) -> dict[str, Any]:
    """The delivery rate of a full queue, and the login p99 while it drains and when quiet."""
    args = bench.args
    queue_db, _ = bench.history("queue", args.small)
    bench.fill(queue_db, args.notices)
    quiet_db, _ = bench.history("quiet", args.small)
    target = sink_count(bench.sink_port) + args.notices

    service = bench.serve("queue", queue_db)
    at_open = sink_count(bench.sink_port)

    async def drain() -> tuple[dict[str, float], float]:
        drained = asyncio.Event()
        load, took = await asyncio.gather(
            open_loop(service.url, traffic, args.drain_rate, DRAIN_TIMEOUT_S, until=drained),
            watch_sink(bench.sink_port, target, drained, DRAIN_TIMEOUT_S),
        )
        return load, took

    during, took = under_load(drain())
    delivered = sink_count(bench.sink_port) - at_open
    bench.stop(service)

    service = bench.serve("quiet", quiet_db)
    quiet = under_load(open_loop(service.url, traffic, args.drain_rate, max(took, 1.0)))
    bench.stop(service)
    row = {
        "notices": args.notices,
        "delivered_after_listening": delivered,
        "seconds": took,
        "per_s": delivered / max(took, 1e-3),
        "during": during,
        "quiet": quiet,
    }
    print(f"[delivery] {json.dumps(row)}", flush=True)
    return row


def burst_turn(bench: Bench, traffic: list[tuple[str, str]]) -> dict[str, Any]:
    """Ordinary traffic quiet, then with ``--burst`` first logins over ``--burst-seconds``."""
    args = bench.args
    db, _ = bench.history("burst", args.small)
    firsts = pairs(first_logins(args.burst))
    service = bench.serve("burst", db)
    quiet = under_load(open_loop(service.url, traffic, args.burst_rate, args.burst_seconds))
    before = sink_count(bench.sink_port)
    ordinary, first = under_load(
        gathered(
            open_loop(service.url, traffic, args.burst_rate, args.burst_seconds),
            open_loop(service.url, firsts, args.burst / args.burst_seconds, args.burst_seconds),
        )
    )
    delivered_during = sink_count(bench.sink_port) - before
    settle = time.monotonic()
    while (
        sink_count(bench.sink_port) - before < args.burst
        and time.monotonic() - settle < BURST_SETTLE_S
    ):
        time.sleep(0.1)
    row = {
        "first_logins": args.burst,
        "seconds": args.burst_seconds,
        "quiet": quiet,
        "ordinary": ordinary,
        "first": first,
        "notices_delivered_during": delivered_during,
        "notices_delivered_after": sink_count(bench.sink_port) - before,
        "settle_s": time.monotonic() - settle,
    }
    bench.stop(service)
    print(f"[burst] {json.dumps(row)}", flush=True)
    return row


# --- the goals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    name: str
    figures: str
    met: bool


def ratio(row: dict[str, Any], mode: str) -> float:
    """Service over bare requests/s of one workload at saturation."""
    return float(row[f"service_{mode}"]["rps"] / row[f"bare_{mode}"]["rps"])


def goals(results: dict[str, Any]) -> list[Goal]:
    """Each goal with the figures it is judged on."""
    large, small = results["figures"]["large"], results["figures"]["small"]
    delivery, burst = results["delivery"], results["burst"]
    floor = THROUGHPUT_GOAL[results["backend"]]
    out = []
    for mode in ("report", "full"):
        svc, bare = large[f"service_{mode}"], large[f"bare_{mode}"]
        out.append(
            Goal(
                f"{MODE_NAMES[mode]} / bare >= {floor:.2f} ({results['backend']} threshold;"
                " large history)",
                f"{svc['rps']:,.0f} / {bare['rps']:,.0f} req/s = {ratio(large, mode):.2f}",
                ratio(large, mode) >= floor,
            )
        )
    for mode in ("report", "full"):
        svc, bare = large[f"service_{mode}"]["p99"], large[f"bare_{mode}"]["p99"]
        out.append(
            Goal(
                f"{MODE_NAMES[mode]} at saturation (wrk): p99 <= {SATURATION_P99_FACTOR:g}x"
                " bare p99 (large history)",
                f"{svc:.2f} ms vs bare {bare:.2f} ms = {svc / bare:.2f}x",
                svc <= SATURATION_P99_FACTOR * bare,
            )
        )
    rate = large["service_rate"]
    out.append(
        Goal(
            f"{results['rate']:,.0f} req/s full, delivering: p99 <= {RATE_P99_MS:g} ms,"
            f" p99.9 <= {RATE_P999_MS:g} ms (large history)",
            f"p50 {rate['p50']:.2f} / p99 {rate['p99']:.2f} / p99.9 {rate['p999']:.2f} ms"
            f" (bare p99 {large['bare_rate']['p99']:.2f})",
            rate["p99"] <= RATE_P99_MS and rate["p999"] <= RATE_P999_MS,
        )
    )
    for mode in ("report", "full"):
        kept = ratio(large, mode) / ratio(small, mode)
        out.append(
            Goal(
                f"{MODE_NAMES[mode]}: large history within 10% of small (ratio large /"
                f" ratio small >= {SIZE_GOAL:.2f})",
                f"{ratio(large, mode):.3f} / {ratio(small, mode):.3f} = {kept:.3f}",
                kept >= SIZE_GOAL,
            )
        )
    out.append(
        Goal(
            f"resident memory, large history <= {RSS_GOAL_MB:.0f} MB",
            f"{large['rss_mb']:.0f} MB (peak {large['peak_rss_mb']:.0f} MB; all processes"
            f" {large['rss_all_mb']:.0f} MB)",
            large["rss_mb"] <= RSS_GOAL_MB,
        )
    )
    out.append(
        Goal(
            f"delivery >= {DELIVERY_GOAL:,.0f} notices/s to the local webhook",
            f"{delivery['per_s']:,.0f}/s ({delivery['delivered_after_listening']:,}"
            f" in {delivery['seconds']:.1f} s)",
            delivery["per_s"] >= DELIVERY_GOAL,
        )
    )
    out.append(p99_goal("login p99 while delivering", delivery, "during", DRAIN_P99_FACTOR, "<="))
    out.append(
        p99_goal("day-one burst: ordinary login p99", burst, "ordinary", BURST_P99_FACTOR, "<")
    )
    return out


def p99_goal(name: str, turn: dict[str, Any], loaded: str, factor: float, op: str) -> Goal:
    """The p99 under load ``turn[loaded]`` against the quiet one, at most ``factor`` times it
    (``op`` "<=" or "<")."""
    under, quiet = turn[loaded]["p99"], turn["quiet"]["p99"]
    met = under <= factor * quiet if op == "<=" else under < factor * quiet
    return Goal(
        f"{name} {op} {factor:g}x quiet",
        f"{under:.2f} ms vs quiet {quiet:.2f} ms = {under / quiet:.2f}x",
        met,
    )


# --- the report ---------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    """The figures of each turn, the goals' table, the informational lines, the JSON line."""
    f = results["figures"]
    print()
    print(
        f"{results['backend']} store, {results['workers']} process(es), deliveries in a"
        f" {results['delivery_in']};"
        f" history: {results['accounts']} accounts ({results['origins']} origins);"
        f" small: {results['small']}"
    )
    for label in ("large", "small"):
        r = f[label]
        for mode in MODES:
            svc, bare = r[f"service_{mode}"], r[f"bare_{mode}"]
            print(
                f"[{label}] {mode:6} at saturation: service {svc['rps']:,.0f} req/s"
                f" p99 {svc['p99']:.2f} ms, bare {bare['rps']:,.0f} req/s p99 {bare['p99']:.2f}"
                f" ms, ratio {ratio(r, mode):.2f}"
            )
        for who in ("service", "bare"):
            print(f"[{label}] {who:7} at {results['rate']:,.0f} req/s: {latency(r[f'{who}_rate'])}")
        print(
            f"[{label}] notices delivered during the runs: {r['notices_delivered_during_runs']};"
            f" rss {r['rss_mb']:.0f} MB (peak {r['peak_rss_mb']:.0f} MB; all processes"
            f" {r['rss_all_mb']:.0f} MB)"
        )
    d, b = results["delivery"], results["burst"]
    print(
        f"delivery: {d['delivered_after_listening']} notices in {d['seconds']:.1f} s ="
        f" {d['per_s']:,.0f}/s; logins at {results['drain_rate']:,.0f} req/s while delivering:"
        f" {latency(d['during'])}; quiet: {latency(d['quiet'])}"
    )
    print(
        f"burst: {b['first_logins']} first logins in {b['seconds']} s beside"
        f" {results['burst_rate']:,.0f} req/s of ordinary reports; ordinary during the burst:"
        f" {latency(b['ordinary'])}; quiet: {latency(b['quiet'])}; the first logins:"
        f" {latency(b['first'])}; their notices delivered {b['notices_delivered_during']}"
        f" during the burst, {b['notices_delivered_after']} {b['settle_s']:.1f} s after it"
    )
    table = goals(results)
    results["goals"] = [{"goal": g.name, "figures": g.figures, "met": g.met} for g in table]
    print()
    print_table(["goal", "figures", "result"], [[g.name, g.figures, verdict(g.met)] for g in table])
    print()
    print(
        f"event loop: the service and the bare handler both make theirs with"
        f" policy_server.service.eventloop.loop_factory(), which picks {results['event_loop']}"
        f" in this process ({eventloop.LOOP_ENV}={os.environ.get(eventloop.LOOP_ENV, '')!r},"
        f" inherited by both)"
    )
    print(
        f"allow alone, service / bare (informational): large {ratio(f['large'], 'allow'):.2f},"
        f" small {ratio(f['small'], 'allow'):.2f}"
    )
    print(json.dumps(results))


def latency(q: dict[str, float]) -> str:
    return (
        f"p50 {q['p50']:.2f} p99 {q['p99']:.2f} p99.9 {q['p999']:.2f} max {q['max']:.1f} ms"
        f" ({q['sent']:,.0f} sent, {q['failures']:.0f} failed)"
    )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for n, row in enumerate([header, *rows]):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("-+-".join("-" * width for width in widths))


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000, help="the large history")
    parser.add_argument("--small", type=int, default=1000, help="the small history")
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk/fixed run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=2000.0, help="the fixed rate, req/s")
    parser.add_argument("--notices", type=int, default=40_000, help="for the delivery rate")
    parser.add_argument(
        "--drain-rate", type=float, default=1000.0, help="login req/s while the queue drains"
    )
    parser.add_argument("--burst", type=int, default=20_000, help="first logins of the burst")
    parser.add_argument("--burst-seconds", type=float, default=60.0)
    parser.add_argument(
        "--burst-rate", type=float, default=1000.0, help="ordinary req/s beside the burst"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument(
        "--delivery",
        choices=["thread", "process"],
        default="thread",
        help="serve --delivery: a thread of the service process, or a process of its own",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    loop = eventloop.new_event_loop()
    results: dict[str, Any] = {
        "accounts": args.accounts,
        "small": args.small,
        "rate": args.rate,
        "drain_rate": args.drain_rate,
        "burst_rate": args.burst_rate,
        "backend": args.backend,
        "workers": args.workers,
        "delivery_in": args.delivery,
        "event_loop": eventloop.loop_name(loop),
    }
    loop.close()
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="policy-server-bench-")))
    began = time.monotonic()
    try:
        bench.geo = write_geo(bench.base / "geo")
        bench.start_peers()
        results["figures"] = figures = {
            "large": history_turn(bench, "large", args.accounts),
            "small": history_turn(bench, "small", args.small),
        }
        results["origins"] = figures["large"]["origins"]
        traffic = ordinary_traffic(args.small)
        results["delivery"] = delivery_turn(bench, traffic)
        results["burst"] = burst_turn(bench, traffic)
        results["seconds"] = time.monotonic() - began
        report(results)
    finally:
        bench.cleanup()
        if args.keep:
            print(f"kept {bench.base}")
        else:
            shutil.rmtree(bench.base, ignore_errors=True)


if __name__ == "__main__":
    main()
