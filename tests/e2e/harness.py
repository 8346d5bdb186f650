"""Processes for end-to-end tests: a private Dovecot instance, the service, a webhook sink.

Everything listens on 127.0.0.1 on free ports, lives in one temporary directory, and is stopped
by process id.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
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
from builds import DovecotBuild, Scenario, copy_stock_config, install_shipped


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


# the key the owner's links are signed with, when a service has its pages on
WEB_SECRET = "e2e-owner-links-secret-0123456789abcdef"


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
        web: bool = False,
        metrics: bool = False,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        # the owner's pages ([web] listen) and /metrics, each on a free port when asked for
        self.web_port = free_port() if web else None
        self.metrics_port = free_port() if metrics else None
        web_section = ""
        if self.web_port is not None:
            web_section = f"""
[web]
listen = "127.0.0.1:{self.web_port}"
public_url = "{self.public_url}"
secret = "{WEB_SECRET}"
"""
        metrics_section = "enabled = false"
        if self.metrics_port is not None:
            metrics_section = f'enabled = true\nlisten = "127.0.0.1:{self.metrics_port}"'
        # the header Dovecot sends for this value ("Name: value", or a bare X-API-Key value)
        name, colon, value = api_header.partition(":")
        self.headers = {name.strip(): value.strip()} if colon else {"X-API-Key": api_header}
        if not api_header:
            self.headers = {}
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
{metrics_section}
{web_section}
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

    @property
    def public_url(self) -> str:
        """The base of the owner's links: the pages' own address (``[web] public_url``)."""
        assert self.web_port is not None, "started without web=True"
        return f"http://127.0.0.1:{self.web_port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``policy-server ARGS -c CONFIG``, the command line with this service's config."""
        return subprocess.run(
            [sys.executable, "-m", "policy_server", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def metric(self, name: str) -> float:
        """A sample of the service's /metrics (needs ``metrics=True``); 0 when absent."""
        assert self.metrics_port is not None, "started without metrics=True"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode("utf-8")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
        return 0.0

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
        for port in (self.web_port, self.metrics_port):
            if port is not None:
                wait_until(functools.partial(port_open, port), 30, f"policy-server on port {port}")

    def post(
        self, command: str, payload: dict[str, Any], timeout: float = 1.0, *, auth: bool = True
    ) -> int:
        """POST a request as Dovecot would and return the HTTP status (OSError: no answer)."""
        request = urllib.request.Request(
            f"{self.url}?command={command}",
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **(self.headers if auth else {})},
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
    """A private Dovecot instance (``dovecot -F -c``) of one build, with passwd-file users.

    Its configuration is the build's stock ``/etc/dovecot`` (copied), the project's shipped
    file for that major in ``conf.d/95-policy-server.conf`` with the URL, the API secret and the
    nonce set (none without a URL), and the test's site and scenario settings in ``local.conf``.
    """

    USERS = (*tuple(f"user{i}" for i in range(1, 41)), "alice", "bob", "carol")

    def __init__(
        self,
        build: DovecotBuild,
        directory: Path,
        url: str | None,
        api_header: str,
        scenario: Scenario,
    ) -> None:
        self.build = build
        self.directory = directory
        self.base_dir = directory / "run"
        self.ports = {"imap": free_port(), "pop3": free_port(), "submission": free_port()}
        self.imap_port = self.ports["imap"]
        self.pop3_port = self.ports["pop3"]
        self.submission_port = self.ports["submission"]
        self.etc = directory / "etc"
        self.config = self.etc / "dovecot.conf"
        self.log_path = directory / "dovecot.log"
        self.url = url
        self.api_header = api_header
        self.scenario = scenario
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
        copy_stock_config(self.build, self.etc)
        if self.url is not None:  # None: no policy server at all
            (self.etc / "conf.d" / "95-policy-server.conf").write_text(
                install_shipped(self.build.major, self.url, self.api_header), encoding="utf-8"
            )
        (self.etc / "local.conf").write_text(
            self.build.site_settings(self.directory, users, self.ports)
            + self.build.scenario_settings(self.scenario),
            encoding="utf-8",
        )

    def inner(self, path: Path) -> str:
        """``path`` as this Dovecot sees it."""
        return str(self.build.inner_path(path))

    def command(self, program: str, *args: str) -> list[str]:
        """A command line for one of Dovecot's programs with this instance's config."""
        return self.build.command(program, "-c", self.inner(self.config), *args)

    def start(self) -> None:
        self.write_config()
        with (self.directory / "dovecot.stdout").open("ab") as out:
            self.proc = subprocess.Popen(
                self.build.command("dovecot", "-F", "-c", self.inner(self.config)),
                stdout=out,
                stderr=out,
            )
        for port in self.ports.values():
            wait_until(functools.partial(self._listening, port), 20, f"Dovecot on port {port}")

    def _listening(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            out = (self.directory / "dovecot.stdout").read_text(errors="replace")
            raise AssertionError(f"Dovecot exited: {out}{self.log()}")
        return port_open(port)

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def policy_lines(self, user: str) -> list[str]:
        """The auth process's policy log lines for ``user`` (detailed with ``auth_debug``)."""
        return self.build.policy_log_lines(self.log(), user)

    def request_bodies(self, user: str) -> list[dict[str, Any]]:
        """The JSON bodies Dovecot logged sending for ``user`` (needs ``auth_debug``)."""
        bodies = []
        for line in self.policy_lines(user):
            _, marker, body = line.partition("Policy server request JSON: ")
            if marker:
                bodies.append(json.loads(body))
        return bodies
