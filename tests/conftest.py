"""Shared fixtures: generated geo data, configs, and a real webhook sink."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from policy_server.config import Config, config_from_mapping

sys.path.insert(0, str(Path(__file__).parent))

# The machine running the tests may be busy; correctness, not speed, is asserted here.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

DATA = Path(__file__).parent / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def geo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from geodata import write_standard_geodata

    return write_standard_geodata(tmp_path_factory.mktemp("geo"))


@pytest.fixture
def make_config(tmp_path: Path, geo_files: dict[str, Path]) -> Callable[..., Config]:
    """A config on the fixture geo data and a fresh SQLite file; sections override by key."""

    def make(**sections: Any) -> Config:
        data: dict[str, Any] = {
            "server": {"listen": f"127.0.0.1:{free_port()}"},
            "geoip": {
                "country_db": str(geo_files["country_mmdb"]),
                "asn_db": str(geo_files["asn_mmdb"]),
                "bundled": False,
            },
            "storage": {"path": str(tmp_path / "store.sqlite3"), "group_commit_wait_ms": 1},
            "queue": {"poll_interval_s": 0.05, "backoff_base_s": 0.05, "backoff_max_s": 0.5},
        }
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return config_from_mapping(data)

    return make


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


@pytest.fixture
async def sink(aiohttp_server: Any) -> AsyncIterator[Sink]:
    recorder = Sink()
    app = web.Application()
    app.router.add_post("/notify", recorder.handle)
    server = await aiohttp_server(app)
    recorder.url = str(server.make_url("/notify"))
    yield recorder


def captures() -> list[dict[str, Any]]:
    """Requests captured from a real Dovecot 2.3.19.1 (tests/data/dovecot-captures.jsonl)."""
    path = DATA / "dovecot-captures.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
