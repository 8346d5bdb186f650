"""How long an IMAP login takes through a real Dovecot, with and without policy-server.

Starts private Dovecot instances with the end-to-end harness (tests/e2e) and times the LOGIN
command, in one run, for three set-ups that share one policy-server:

* ``disabled``: no auth_policy_server_url;
* ``example``: the settings of dovecot-example.conf (report only);
* ``checks``: the same plus the before-auth and after-auth allow checks (three requests a login).

The set-ups take turns login by login, so that whatever else the machine does at some moment
weighs on all three alike.

Usage: .venv/bin/python bench/login_latency.py [--logins 300]
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

from geodata import write_standard_geodata  # noqa: E402
from harness import Dovecot, PolicyService, WebhookSink, example_policy_settings  # noqa: E402


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


def run(base: Path, logins: int) -> dict[str, list[float]]:
    sink = WebhookSink()
    sink.start()
    (base / "svc").mkdir()
    service = PolicyService(base / "svc", write_standard_geodata(base / "geo"), sink.url)
    dovecots: dict[str, Dovecot] = {}
    try:
        service.start()
        example = example_policy_settings()
        example["auth_policy_server_url"] = service.url
        checks = {
            **example,
            "auth_policy_check_before_auth": "yes",
            "auth_policy_check_after_auth": "yes",
        }
        for name, policy in (("disabled", {}), ("example", example), ("checks", checks)):
            dovecots[name] = Dovecot(base / name, policy)
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


def main() -> int:
    parser = argparse.ArgumentParser(description="IMAP login time with and without the policy")
    parser.add_argument("--logins", type=int, default=300, help="logins per set-up")
    args = parser.parse_args()
    if shutil.which("dovecot") is None:
        print("dovecot is not installed", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    # Dovecot's unprivileged processes must reach their files below it
    base.chmod(0o755)
    try:
        results = run(base, args.logins)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    base_median = statistics.median(results["disabled"])
    base_p99 = percentile(results["disabled"], 0.99)
    print(f"IMAP LOGIN round trip, {args.logins} logins per set-up, {time.strftime('%Y-%m-%d')}")
    print(f"{'set-up':10} {'median ms':>10} {'p99 ms':>8} {'median ratio':>13} {'p99 ratio':>10}")
    for name, times in results.items():
        median = statistics.median(times)
        p99 = percentile(times, 0.99)
        print(
            f"{name:10} {median * 1000:10.2f} {p99 * 1000:8.2f}"
            f" {median / base_median:13.2f} {p99 / base_p99:10.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
