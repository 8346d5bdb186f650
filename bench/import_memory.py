"""Memory of ``import-log`` and ``replay`` on long logs: flat in the length of the log.

Two Dovecot logs are generated in a temporary directory, each as two rotated files whose times
interleave (so the files must be merged): a short one and a long one (5,000,000 lines by
default), with the same 2,000 accounts; one line in ten is a login, the rest is what else a
mail log holds. ``policy-server import-log`` and ``policy-server replay`` run on each as child
processes, and their peak resident memory (``ru_maxrss``) is read when they exit.

Goal: the long log's peak is within 1.2x of the short one's (memory flat in the number of
lines); the figures and the time each run took are printed.

Usage: .venv/bin/python bench/import_memory.py [--lines 5000000] [--short 50000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from geodata import write_standard_geodata  # noqa: E402

ACCOUNTS = 2000
GOAL_RATIO = 1.2
NOISE = "{stamp} mail dovecot: imap({user})<{n}><abcdef>: Disconnected: Logged out in=12 out=345\n"
LOGIN = (
    "{stamp} mail dovecot: imap-login: Login: user=<{user}>, method=PLAIN, rip={rip},"
    " lip=192.0.2.1, mpid={n}, TLS, session=<abcdef>\n"
)
REMOTES = ("203.0.113.7", "198.51.100.9", "192.0.2.5", "203.0.113.99")


def write_log(directory: Path, lines: int) -> list[Path]:
    """Two files, each in time order, their times interleaved; ``lines`` lines in all."""
    start = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    paths = [directory / "mail.log.1", directory / "mail.log"]
    handles = [path.open("w", encoding="utf-8") for path in paths]
    try:
        for n in range(lines):
            stamp = datetime.fromtimestamp(start + n * 0.5, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
            user = f"user{n % ACCOUNTS}@example.com"
            template = LOGIN if n % 10 == 0 else NOISE
            rip = REMOTES[(n // ACCOUNTS) % len(REMOTES)]
            handles[n % 2].write(template.format(stamp=stamp, user=user, rip=rip, n=n))
    finally:
        for handle in handles:
            handle.close()
    return paths


def write_config(directory: Path, geo: dict[str, Path]) -> Path:
    config = directory / "policy.toml"
    config.write_text(
        f'[storage]\npath = "{directory / "store.sqlite3"}"\n'
        f'[geoip]\ncountry_db = "{geo["country_mmdb"]}"\nasn_db = "{geo["asn_mmdb"]}"\n'
        "bundled = false\n",
        encoding="utf-8",
    )
    return config


def peak_of(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its peak resident memory in MB and the seconds it took."""
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    took = time.monotonic() - started
    errors = child.stderr.read().decode() if child.stderr else ""
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {errors}")
    return usage.ru_maxrss / 1024, took


def measure(base: Path, geo: dict[str, Path], lines: int) -> dict[str, tuple[float, float]]:
    directory = base / f"log-{lines}"
    directory.mkdir()
    logs = [str(p) for p in write_log(directory, lines)]
    config = str(write_config(directory, geo))
    cli = [sys.executable, "-m", "policy_server"]
    return {
        "import-log": peak_of([*cli, "import-log", *logs, "-c", config]),
        "replay": peak_of([*cli, "replay", "--candidate", config, "-c", config, *logs]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--short", type=int, default=50_000)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway stops the bench
    with tempfile.TemporaryDirectory(prefix="policy-server-bench-") as name:
        base = Path(name)
        geo = write_standard_geodata(base / "geo")
        short = measure(base, geo, args.short)
        long = measure(base, geo, args.lines)
    met = True
    print(f"peak resident memory, {args.short:,} lines against {args.lines:,} lines:")
    for command in short:
        (small, small_s), (big, big_s) = short[command], long[command]
        ratio = big / small
        ok = ratio <= GOAL_RATIO
        met &= ok
        print(
            f"  {command:<10} {small:7.1f} MB ({small_s:6.1f} s)   {big:7.1f} MB ({big_s:6.1f} s)"
            f"   x{ratio:.2f}  goal <= x{GOAL_RATIO}: {'met' if ok else 'MISSED'}"
        )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
