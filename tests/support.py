"""Helpers shared by tests: a recording webhook sink, scripted HTTP peers, a sample notice, free
ports, captured Dovecot requests."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from policy_server.model import Notice, Reason

DATA = Path(__file__).parent / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sink:
    """A webhook receiver: records every request, answers from a script of statuses."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        self.received.append(json.loads(body))
        self.arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text="ok" if status < 400 else "nope")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` deliveries arrived (bounded)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while len(self.received) < count:
            remaining = until - loop.time()
            if remaining <= 0:
                raise AssertionError(f"sink got {len(self.received)} deliveries, expected {count}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                continue
        return self.received

    def ids(self) -> list[str]:
        return [d["id"] for d in self.received]


def captures() -> list[dict[str, Any]]:
    """Requests captured from a real Dovecot 2.3.19.1 (tests/data/dovecot-captures.jsonl)."""
    path = DATA / "dovecot-captures.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def make_notice(**changes: Any) -> Notice:
    """A notice as the channels and templates see it; ``changes`` override single fields."""
    base = Notice(
        id="01J8Z3K6Q2W4E5R6T7Y8U9I0OP",
        account="taro@example.jp",
        login="Taro@example.jp",
        reasons=(Reason.NEW_COUNTRY, Reason.NEW_PROVIDER),
        protocol="imap",
        remote="198.51.100.20",
        time=datetime(2020, 3, 10, 20, 12, 44, tzinfo=UTC),
        country="US",
        asn=64510,
        as_org="Example Hosting US",
        prefix="198.51.100.0/24",
    )
    return dataclasses.replace(base, **changes)


@dataclass
class Request:
    """One request a scripted peer received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedPeer:
    """An HTTP peer (webhook receiver, SMS gateway) that records every request and answers a
    scripted sequence of responses, then ``default`` ones."""

    server: TestServer
    path: str
    default: Callable[[], web.StreamResponse]
    requests: list[Request] = field(default_factory=list)
    script: list[web.StreamResponse] = field(default_factory=list)

    def url(self, path: str | None = None) -> str:
        return str(self.server.make_url(path or self.path))

    def answer(self, status: int, *, body: str = "", headers: dict[str, str] | None = None) -> None:
        self.script.append(web.Response(status=status, text=body, headers=headers))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        return self.script.pop(0) if self.script else self.default()


async def scripted_peer(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    path: str,
    default: Callable[[], web.StreamResponse],
    app: web.Application | None = None,
    also: tuple[str, ...] = (),
) -> ScriptedPeer:
    """Start a scripted peer answering any method on ``path`` and the ``also`` paths (other
    routes may be on ``app``)."""
    app = app if app is not None else web.Application()
    state: dict[str, ScriptedPeer] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        return await state["peer"].handle(request)

    for route in (path, *also):
        app.router.add_route("*", route, handle)
    server = await aiohttp_server(app)
    state["peer"] = ScriptedPeer(server, path, default)
    return state["peer"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def service_config(
    path: Path,
    *,
    port: int,
    geo: dict[str, Path],
    storage: dict[str, Any],
    sink_url: str,
    asn: str = "asn_mmdb",
    **sections: dict[str, Any],
) -> Path:
    """Write the TOML config of a ``policy-server`` child process: the fixture geo data, the
    given store, a fast queue, no hold, no per-account limit, no breaker, no metrics listener,
    one webhook channel to ``sink_url``; ``sections`` add or override keys by section
    (``channel`` for the webhook channel's)."""
    data: dict[str, dict[str, Any]] = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "geoip": {"country_db": geo["country_mmdb"], "asn_db": geo[asn], "bundled": False},
        "storage": storage,
        "queue": {"poll_interval_s": 0.1},
        "delivery": {"hold_s": 0, "throttle": []},
        "breaker": {"enabled": False},
        "metrics": {"enabled": False},
    }
    channel: dict[str, Any] = {"type": "webhook", "url": sink_url}
    for name, values in sections.items():
        if name == "channel":
            channel.update(values)
        else:
            data[name] = {**data.get(name, {}), **values}
    lines: list[str] = []
    for name, values in [*data.items(), ("[channels]", channel)]:
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
