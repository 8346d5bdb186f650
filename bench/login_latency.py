"""How long an IMAP login takes through a real Dovecot, with and without policy-server.

Starts private Dovecot instances with the end-to-end harness (tests/e2e) and times the LOGIN
command, in one run, for three set-ups that share one policy-server:

* ``disabled``: no auth-policy settings;
* ``example``: the shipped file of that Dovecot major (report only): dovecot-example.conf for
  2.4, conf/dovecot-2.3.conf for 2.3;
* ``checks``: the same plus the before-auth and after-auth allow checks (three requests a login).

The set-ups take turns login by login, so that whatever else the machine does at some moment
weighs on all three alike. Each Dovecot major found is measured: 2.3 on this machine, 2.4 in
the Debian 13 root of scripts/debian13-root.

Usage: .venv/bin/python bench/login_latency.py [--logins 300] [--dovecot 2.3 2.4]
Needs Dovecot (Debian: dovecot-imapd dovecot-pop3d dovecot-submissiond) and root.
"""

from __future__ import annotations

import argparse
import imaplib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests"))

from builds import DovecotBuild, Scenario, debian13_build, host_build  # noqa: E402
from geodata import write_standard_geodata  # noqa: E402
from harness import Dovecot, PolicyService, WebhookSink  # noqa: E402

API_HEADER = "X-API-Key: bench-secret"


def timed_login(port: int, user: str, address: str) -> float:
    """Seconds the LOGIN command takes (connection and ID are set up before the clock starts)."""
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        client.xatom("ID", f'("x-originating-ip" "{address}")')
        started = time.perf_counter()
        typ, _ = client.login(user, Dovecot.password(user))
        took = time.perf_counter() - started
        if typ != "OK":
            raise RuntimeError(f"login of {user} failed: {typ}")
        return took
    finally:
        client.logout()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(build: DovecotBuild, base: Path, logins: int) -> dict[str, list[float]]:
    sink = WebhookSink()
    sink.start()
    (base / "svc").mkdir()
    service = PolicyService(
        base / "svc", write_standard_geodata(base / "geo"), sink.url, api_header=API_HEADER
    )
    dovecots: dict[str, Dovecot] = {}
    try:
        service.start()
        setups = (
            ("disabled", None, Scenario()),
            ("example", service.url, Scenario()),
            ("checks", service.url, Scenario(checks=True)),
        )
        for name, url, scenario in setups:
            dovecots[name] = Dovecot(build, base / name, url, API_HEADER, scenario)
            dovecots[name].start()
        results: dict[str, list[float]] = {name: [] for name in dovecots}
        users = Dovecot.USERS
        for i in range(-20, logins):  # the first 20 rounds warm up processes and caches
            # mostly known origins, a few new ones, as in real traffic
            address = f"203.0.113.{i % 4 + 1}" if i % 10 else f"198.51.100.{i % 200 + 1}"
            for name, dovecot in dovecots.items():
                took = timed_login(dovecot.imap_port, users[i % len(users)], address)
                if i >= 0:
                    results[name].append(took)
        return results
    finally:
        for dovecot in dovecots.values():
            dovecot.stop()
        service.stop()
        sink.stop()


def report(major: str, version: str, logins: int, results: dict[str, list[float]]) -> None:
    base_median = statistics.median(results["disabled"])
    base_p99 = percentile(results["disabled"], 0.99)
    print(
        f"Dovecot {version}: IMAP LOGIN round trip, {logins} logins per set-up,"
        f" {time.strftime('%Y-%m-%d')}"
    )
    print(f"{'set-up':10} {'median ms':>10} {'p99 ms':>8} {'median ratio':>13} {'p99 ratio':>10}")
    for name, times in results.items():
        median = statistics.median(times)
        p99 = percentile(times, 0.99)
        print(
            f"{name:10} {median * 1000:10.2f} {p99 * 1000:8.2f}"
            f" {median / base_median:13.2f} {p99 / base_p99:10.2f}"
        )
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description="IMAP login time with and without the policy")
    parser.add_argument("--logins", type=int, default=300, help="logins per set-up")
    parser.add_argument(
        "--dovecot", nargs="+", choices=("2.3", "2.4"), default=["2.3", "2.4"], help="majors"
    )
    args = parser.parse_args()
    finders = {"2.3": host_build, "2.4": debian13_build}
    measured = 0
    for major in args.dovecot:
        build = finders[major]()
        if isinstance(build, str):
            print(f"Dovecot {major}: not measured: {build}\n")
            continue
        base = Path(tempfile.mkdtemp(prefix="policy-bench-", dir=build.work_parent()))
        # Dovecot's unprivileged processes must reach their files below it
        base.chmod(0o755)
        try:
            report(major, build.version(), args.logins, run(build, base, args.logins))
            measured += 1
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if measured else 2


if __name__ == "__main__":
    raise SystemExit(main())
