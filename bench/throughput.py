"""Throughput, latency, memory and delivery rate of the service, side by side with the limit.

In one run, against the same generated inputs (see bench/workload.py):

1. the full workload (allow, allow, report per login) and allow alone, driven by wrk as fast as
   it goes, against the service and against a bare aiohttp handler returning the constant
   answer (the limit), so every figure is also a ratio;
2. a fixed offered rate (2,000 requests/s by default) from an open-loop asyncio client that
   measures from each request's scheduled time (no coordinated omission), against both, while
   the service's worker delivers the notices the workload makes to a local webhook sink;
3. the same with a history of 1,000 accounts, for the ratio "large over small";
4. the resident memory of the service with the large history;
5. how fast the worker empties a queue of notices into the local sink.

Usage: .venv/bin/python bench/throughput.py [--accounts 1000000] [--duration 15]
Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workload import (  # noqa: E402
    drop_schema_pg,
    requests,
    write_geo,
    write_history,
    write_history_pg,
    write_wrk_script,
)


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


async def open_loop(
    url: str, bodies: list[tuple[str, str]], rate: float, seconds: float
) -> dict[str, float]:
    """Send at a fixed rate whatever the answers do; latency from the scheduled send time."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    # this process holds hundreds of thousands of request bodies: a full collection of them
    # would stall the client for a tenth of a second and show up as the server's latency
    gc.collect()
    gc.freeze()
    gc.disable()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        start_at = loop.time() + 0.2
        total = int(rate * seconds)
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
            latencies.append(loop.time() - scheduled)

        for i in range(total):
            scheduled = start_at + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    gc.enable()
    gc.unfreeze()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "sent": float(total),
        "failures": float(failures),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "max": latencies[-1] * 1000,
    }


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


def sink_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
        return int(json.loads(resp.read())["count"])


def fill_queue(db: Path, count: int) -> None:
    """``count`` notices due now, straight into the queue tables."""
    now = time.time()
    payload = json.dumps(
        {
            "id": "",
            "login": "u",
            "reasons": ["new_country"],
            "protocol": "imap",
            "remote": "11.0.0.1",
            "country": "US",
            "asn": 65001,
            "as_org": "Provider 65001",
            "time": "2026-11-29T00:00:00+00:00",
            "account": "",
            "prefix": "11.0.0.0/24",
            "history": [],
        }
    )
    with sqlite3.connect(db) as conn:
        notices = []
        deliveries = []
        for i in range(count):
            data = json.loads(payload)
            data.update(id=f"n{i}", login=f"bulk{i}", account=f"bulk{i}")
            notices.append((f"n{i}", f"bulk{i}", now, '["new_country"]', json.dumps(data), ""))
            deliveries.append((f"n{i}", "webhook-0", f"bulk{i}", now, now + 86400, now, now))
        conn.executemany(
            "INSERT INTO notices (id, account, created, reasons, payload, origin_key)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            notices,
        )
        conn.executemany(
            "INSERT INTO deliveries (notice_id, channel, account, status, next_attempt,"
            " deadline, created, updated) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
            deliveries,
        )


async def fill_queue_pg(dsn: str, schema: str, count: int) -> None:
    import asyncpg

    now = time.time()
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        notices = []
        deliveries = []
        for i in range(count):
            payload = {
                "id": f"n{i}", "login": f"bulk{i}", "reasons": ["new_country"],
                "protocol": "imap", "remote": "11.0.0.1", "country": "US", "asn": 65001,
                "as_org": "Provider 65001", "time": "2026-11-29T00:00:00+00:00",
                "account": f"bulk{i}", "prefix": "11.0.0.0/24", "history": [],
            }  # fmt: skip
            notices.append((f"n{i}", f"bulk{i}", now, '["new_country"]', json.dumps(payload), ""))
            deliveries.append((f"bulk{i}", f"n{i}", "webhook-0", "queued", now, now + 86400,
                               now, now))  # fmt: skip
        await conn.executemany(
            "INSERT INTO notices (id, account, created, reasons, payload, origin_key)"
            " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
            notices,
        )
        await conn.executemany(
            "INSERT INTO deliveries (account, notice_id, channel, status, next_attempt, deadline,"
            " created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            deliveries,
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--notices", type=int, default=20_000, help="for the delivery rate")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    args = parser.parse_args()
    pg = args.backend == "postgres"
    tag = f"bench_{os.getpid()}"
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    base = Path(tempfile.mkdtemp(prefix="policy-server-bench-"))
    results: dict[str, Any] = {"accounts": args.accounts, "small": args.small, "rate": args.rate}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t = time.monotonic()
        geo = write_geo(base / "geo")
        big_db: Path | str
        small_db: Path | str
        if pg:
            big_db, small_db = f"{tag}_large", f"{tag}_small"
            results["origins"] = asyncio.run(write_history_pg(args.dsn, big_db, args.accounts))
            asyncio.run(write_history_pg(args.dsn, small_db, args.small))
        else:
            big_db, small_db = base / "big.sqlite3", base / "small.sqlite3"
            results["origins"] = write_history(big_db, args.accounts)
            write_history(small_db, args.small)
        results["backend"], results["workers"] = args.backend, args.workers
        dsn = args.dsn if pg else ""
        serve = [sys.executable, "-m", "policy_server", "serve", "--log-level", "warning"]
        if args.workers > 1:
            serve += ["--workers", str(args.workers)]
        print(
            f"inputs written in {time.monotonic() - t:.0f}s: {results['origins']} origins",
            flush=True,
        )

        sink_port, bare_port = free_port(), free_port()
        procs.append(
            start(
                [sys.executable, str(HERE / "peers.py"), "sink", str(sink_port)], base / "sink.log"
            )
        )
        procs.append(
            start(
                [sys.executable, str(HERE / "peers.py"), "bare", str(bare_port)], base / "bare.log"
            )
        )
        wait_port(sink_port)
        wait_port(bare_port)
        sink = f"http://127.0.0.1:{sink_port}/notify"

        figures: dict[str, dict[str, Any]] = {}
        for label, accounts, db in (
            ("large", args.accounts, big_db),
            ("small", args.small, small_db),
        ):
            full = requests(accounts, 600_000)
            allow = requests(accounts, 200_000, allow_only=True)
            write_wrk_script(base / f"full-{label}.lua", full)
            write_wrk_script(base / f"allow-{label}.lua", allow)
            port = free_port()
            conf = service_config(base / f"{label}.toml", port, db, geo, sink, dsn)
            service = start(
                [
                    sys.executable,
                    "-m",
                    "policy_server",
                    "serve",
                    "-c",
                    str(conf),
                    "--log-level",
                    "warning",
                ],
                base / f"{label}.log",
            )
            procs.append(service)
            wait_port(port)
            url = f"http://127.0.0.1:{port}/"
            bare_url = f"http://127.0.0.1:{bare_port}/"
            row: dict[str, Any] = {}
            before = sink_count(sink_port)
            row["bare_full"] = wrk(
                bare_url, base / f"full-{label}.lua", args.duration, args.connections
            )
            row["service_full"] = wrk(
                url, base / f"full-{label}.lua", args.duration, args.connections
            )
            row["bare_allow"] = wrk(
                bare_url, base / f"allow-{label}.lua", args.duration, args.connections
            )
            row["service_allow"] = wrk(
                url, base / f"allow-{label}.lua", args.duration, args.connections
            )
            bodies = [(r.command, r.body) for r in full[300_000:]]
            row["bare_rate"] = asyncio.run(open_loop(bare_url, bodies, args.rate, args.duration))
            row["service_rate"] = asyncio.run(open_loop(url, bodies, args.rate, args.duration))
            time.sleep(1)
            row["notices_delivered_during_runs"] = sink_count(sink_port) - before
            row["rss_mb"], row["peak_rss_mb"] = rss_mb(service.pid)
            for child in (
                Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()
            ):
                now_mb, peak_mb = rss_mb(int(child))  # serve --workers N: add each process
                row["rss_mb"] += now_mb
                row["peak_rss_mb"] += peak_mb
            stop(service)
            if pg and Path(str(db)).exists():
                sys.exit(f"the service wrote a SQLite file {db}: it did not run on PostgreSQL")
            figures[label] = row
            print(f"{label}: {json.dumps(row)}", flush=True)

        # delivery rate: a full queue, emptied into the sink
        queue_db: Path | str
        if pg:
            queue_db = f"{tag}_queue"
            asyncio.run(write_history_pg(args.dsn, queue_db, 10))
            asyncio.run(fill_queue_pg(args.dsn, queue_db, args.notices))
        else:
            queue_db = base / "queue.sqlite3"
            write_history(queue_db, 10)
            fill_queue(queue_db, args.notices)
        port = free_port()
        conf = service_config(base / "queue.toml", port, queue_db, geo, sink, dsn)
        before = sink_count(sink_port)
        t = time.monotonic()
        service = start(
            [
                sys.executable,
                "-m",
                "policy_server",
                "serve",
                "-c",
                str(conf),
                "--log-level",
                "warning",
            ],
            base / "queue.log",
        )
        procs.append(service)
        wait_port(port)
        started = time.monotonic()
        while sink_count(sink_port) - before < args.notices and time.monotonic() - t < 300:
            time.sleep(0.1)
        took = time.monotonic() - started
        delivered = sink_count(sink_port) - before
        stop(service)
        results["delivery"] = {"notices": delivered, "seconds": took, "per_s": delivered / took}
        results["figures"] = figures
        report(results)
    finally:
        for proc in procs:
            stop(proc)
        if pg:
            for suffix in ("large", "small", "queue"):
                asyncio.run(drop_schema_pg(args.dsn, f"{tag}_{suffix}"))
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def report(results: dict[str, Any]) -> None:
    f = results["figures"]
    print()
    print(
        f"{results['backend']} store, {results['workers']} process(es);"
        f" history: {results['accounts']} accounts ({results['origins']} origins);"
        f" small: {results['small']}"
    )
    for label in ("large", "small"):
        r = f[label]
        for kind in ("full", "allow"):
            svc, bare = r[f"service_{kind}"]["rps"], r[f"bare_{kind}"]["rps"]
            print(
                f"[{label}] {kind:5} workload: service {svc:.0f} req/s,"
                f" bare {bare:.0f} req/s, ratio {svc / bare:.2f}"
            )
        for who in ("service", "bare"):
            q = r[f"{who}_rate"]
            print(
                f"[{label}] {who:7} at {results['rate']:.0f} req/s: p50 {q['p50']:.2f}"
                f" p99 {q['p99']:.2f} p99.9 {q['p999']:.2f} max {q['max']:.1f} ms"
                f" (failures {q['failures']:.0f})"
            )
        print(
            f"[{label}] notices delivered during the runs: {r['notices_delivered_during_runs']};"
            f" rss {r['rss_mb']:.0f} MB (peak {r['peak_rss_mb']:.0f} MB)"
        )
    large, small = f["large"], f["small"]
    throughput = large["service_full"]["rps"] / small["service_full"]["rps"]
    p99 = large["service_rate"]["p99"] / small["service_rate"]["p99"]
    print(f"large/small: full-workload throughput {throughput:.2f}, fixed-rate p99 {p99:.2f}")
    d = results["delivery"]
    print(f"delivery: {d['notices']} notices in {d['seconds']:.1f}s = {d['per_s']:.0f}/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
