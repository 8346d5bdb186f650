"""How long an IMAP login takes through a real Dovecot, with and without policy-server.

Starts private Dovecot instances (the end-to-end harness) and measures LOGIN round trips, in one
run, for three set-ups:

* ``disabled``: no auth_policy_server_url;
* ``example``: the settings of dovecot-example.conf (report only);
* ``checks``: the same plus the before-auth and after-auth allow checks (three requests a login).

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


def measure(port: int, logins: int, users: tuple[str, ...]) -> list[float]:
    """Seconds per LOGIN command (connection set up before the clock starts)."""
    times: list[float] = []
    for i in range(logins):
        user = users[i % len(users)]
        client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        try:
            # a few distinct addresses per user: mostly known origins, as in real traffic
            client.xatom("ID", f'("x-originating-ip" "203.0.113.{i % 4 + 1}")')
            started = time.perf_counter()
            typ, _ = client.login(user, Dovecot.password(user))
            times.append(time.perf_counter() - started)
            assert typ == "OK"
        finally:
            client.logout()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logins", type=int, default=300)
    args = parser.parse_args()
    if shutil.which("dovecot") is None:
        print("dovecot is not installed", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    base.chmod(0o755)
    sink = WebhookSink()
    sink.start()
    (base / "svc").mkdir()
    service = PolicyService(base / "svc", write_standard_geodata(base / "geo"), sink.url)
    service.start()
    example = example_policy_settings()
    example["auth_policy_server_url"] = service.url
    setups = {
        "disabled": {},
        "example": example,
        "checks": {
            **example,
            "auth_policy_check_before_auth": "yes",
            "auth_policy_check_after_auth": "yes",
        },
    }
    results: dict[str, list[float]] = {}
    try:
        for name, policy in setups.items():
            dovecot = Dovecot(base / name, policy)
            dovecot.start()
            try:
                measure(dovecot.imap_port, 20, Dovecot.USERS)  # warm-up
                results[name] = measure(dovecot.imap_port, args.logins, Dovecot.USERS)
            finally:
                dovecot.stop()
    finally:
        service.stop()
        sink.stop()
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
