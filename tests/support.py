"""Helpers shared by tests: a recording webhook sink, free ports, captured Dovecot requests."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

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
