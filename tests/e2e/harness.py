"""Processes for end-to-end tests: a private Dovecot instance, the service, a webhook sink.

Everything listens on 127.0.0.1 on free ports, lives in one temporary directory, and is stopped
by process id.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "dovecot-example.conf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def example_policy_settings() -> dict[str, str]:
    """The Dovecot 2.3 auth-policy settings of the project's dovecot-example.conf."""
    settings: dict[str, str] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(auth_policy_\w+)\s*=\s*(.*)$", line)
        if match:
            settings[match.group(1)] = match.group(2).strip()
    return settings


class WebhookSink:
    """An aiohttp server in a thread of its own that records what the service delivers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/notify"
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        with self._lock:
            self._received.append(payload)
        return web.Response(text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def received(self, login: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._received)
        return [n for n in items if login is None or n["login"] == login]

    def wait_for(self, login: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        return list(
            wait_until(
                lambda: len(self.received(login)) >= count and self.received(login),
                timeout,
                f"{count} notice(s) for {login}",
            )
        )


class PolicyService:
    """``policy-server serve`` as a child process with its own config and SQLite file."""

    def __init__(
        self,
        directory: Path,
        geo: dict[str, Path],
        sink_url: str,
        api_header: str = "",
        hold_s: float = 0.0,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.db = directory / "policy.sqlite3"
        # The service logs to stderr: a file of its own, so assertions read exactly its log.
        self.log_path = directory / "policy-server.stderr"
        self.stdout_path = directory / "policy-server.stdout"
        self.config = directory / "policy.toml"
        self.config.write_text(
            f"""
[server]
listen = "127.0.0.1:{self.port}"
api_header = "{api_header}"
request_budget_ms = 500
[geoip]
country_db = "{geo["country_mmdb"]}"
asn_db = "{geo["asn_mmdb"]}"
bundled = false
[storage]
path = "{self.db}"
[policy]
touch_granularity_s = 0
[message]
language = "en"
[queue]
poll_interval_s = 0.1
backoff_base_s = 0.1
backoff_max_s = 1.0
lease_s = 5.0
[delivery]
# no wait before the first delivery unless a test coalesces; no per-account limit
hold_s = {hold_s}
throttle = []
[metrics]
enabled = false
[[channels]]
type = "webhook"
url = "{sink_url}"
""",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        with self.log_path.open("ab") as log, self.stdout_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "policy_server",
                    "serve",
                    "-c",
                    str(self.config),
                    "--log-level",
                    "debug",
                ],
                stdout=out,
                stderr=log,
            )
        wait_until(self.ready, 30, "policy-server to answer")

    def post(self, command: str, payload: dict[str, Any], timeout: float = 1.0) -> int:
        """POST a request as Dovecot would and return the HTTP status (OSError: no answer)."""
        request = urllib.request.Request(
            f"{self.url}?command={command}",
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"policy-server exited: {self.log()}")
        probe = {"login": "probe", "remote": "127.0.0.1", "protocol": "imap", "tls": False}
        try:
            status = self.post("allow", probe)
        except OSError:
            return False
        # 401 means it is up but wants the api header; that is ready too
        return status in (200, 401)

    def stop(self) -> None:
        stop_process(self.proc)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def log(self) -> str:
        """Everything the service wrote to stderr so far (its log)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def origins(self, account: str) -> int:
        rows = self.query("SELECT coalesce(sum(count), 0) FROM origins WHERE account = ?", account)
        return int(rows[0][0])

    def failures(self, account: str) -> int:
        rows = self.query("SELECT failures FROM accounts WHERE account = ?", account)
        return int(rows[0][0]) if rows else 0

    def notices(self, account: str) -> int:
        return int(self.query("SELECT count(*) FROM notices WHERE account = ?", account)[0][0])


class Dovecot:
    """A private Dovecot instance (``dovecot -F -c``) with passwd-file users."""

    USERS = (*tuple(f"user{i}" for i in range(1, 41)), "alice", "bob", "carol")

    def __init__(self, directory: Path, policy: dict[str, str]) -> None:
        self.directory = directory
        self.base_dir = directory / "run"
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.submission_port = free_port()
        self.config = directory / "dovecot.conf"
        self.log_path = directory / "dovecot.log"
        self.policy = policy
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def password(user: str) -> str:
        return f"pw-{user}"

    def write_config(self) -> None:
        for sub in ("run", "state", "mail"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory / "mail", 0o777)
        users = self.directory / "users"
        users.write_text(
            "".join(f"{u}:{{PLAIN}}{self.password(u)}::::::\n" for u in self.USERS),
            encoding="utf-8",
        )
        policy = "\n".join(f"{key} = {value}" for key, value in self.policy.items())
        self.config.write_text(
            f"""
base_dir = {self.base_dir}
state_dir = {self.directory / "state"}
log_path = {self.log_path}
protocols = imap pop3 submission
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8 ::1/128
imap_id_retain = yes
auth_failure_delay = 0
auth_verbose = yes
hostname = localhost
submission_relay_host = 127.0.0.1
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:{self.directory / "mail"}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={self.directory / "mail"}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {self.submission_port}
  }}
}}
{policy}
""",
            encoding="utf-8",
        )

    def start(self) -> None:
        self.write_config()
        with (self.directory / "dovecot.stdout").open("ab") as out:
            self.proc = subprocess.Popen(
                [shutil.which("dovecot") or "dovecot", "-F", "-c", str(self.config)],
                stdout=out,
                stderr=out,
            )
        for port in (self.imap_port, self.pop3_port, self.submission_port):
            wait_until(functools.partial(self._listening, port), 20, f"Dovecot on port {port}")

    def _listening(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Dovecot exited: {self.log()}")
        return port_open(port)

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def policy_lines(self, user: str) -> list[str]:
        """The auth process's policy log lines for ``user`` (detailed with ``auth_debug``)."""
        return [line for line in self.log().splitlines() if f"policy({user}," in line]
