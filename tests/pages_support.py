"""The owner's pages, served by a running service: its fixtures and an owner's HTTP client
(for tests/test_pages.py and tests/test_pages_browser.py)."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, CookieJar, web
from aiohttp.test_utils import TestClient
from support import Sink, free_port

from policy_server.config import Config
from policy_server.service import keys
from policy_server.service.app import create_app

Client = TestClient[web.Request, web.Application]

SECRET = "s3cret-for-the-owner-links-0123456789"
HOME = "203.0.113.7"  # AS64500 "Example Carrier JP", JP
ABROAD = "198.51.100.7"  # AS64510 "Example Hosting US", US
ALLOWED = {"status": 0, "msg": ""}
REFUSED = {"status": -1, "msg": "login refused from this network; see your notice"}


class _Form(HTMLParser):
    """The page's form: its action, hidden fields and buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.buttons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and a.get("name") == "answer":
            self.buttons.append(a["value"])


def read_form(html: str) -> _Form:
    form = _Form()
    form.feed(html)
    return form


@dataclass
class Owner:
    """The account owner's browser: a cookie jar and the page's origin."""

    session: ClientSession
    origin: str

    async def get(self, url: str) -> tuple[int, str, Any]:
        async with self.session.get(url) as resp:
            return resp.status, await resp.text(), resp.headers

    async def post(
        self, url: str, fields: dict[str, str], origin: str | None = None
    ) -> tuple[int, str]:
        headers = {"Origin": origin or self.origin}
        async with self.session.post(url, data=fields, headers=headers) as resp:
            return resp.status, await resp.text()

    async def answer(self, url: str, answer: str) -> tuple[int, str]:
        status, html, _ = await self.get(url)
        assert status == 200, html
        form = read_form(html)
        assert answer in form.buttons, form.buttons
        assert form.action is not None
        return await self.post(
            urllib.parse.urljoin(url, form.action), {**form.fields, "answer": answer}
        )


@dataclass
class Running:
    client: Client
    hook: Sink
    admin: Sink
    public_url: str
    program_out: Path

    async def report(self, login: str, remote: str, device_id: str = "") -> None:
        body = {"login": login, "remote": remote, "protocol": "imap", "success": True}
        if device_id:
            body["device_id"] = device_id
        resp = await self.client.post("/?command=report", data=json.dumps(body))
        assert resp.status == 200

    async def allow(self, login: str, remote: str) -> Any:
        body = {"login": login, "remote": remote, "protocol": "imap"}
        resp = await self.client.post("/?command=allow", data=json.dumps(body))
        return await resp.json()

    async def notice(self, login: str, remote: str, device_id: str = "") -> dict[str, Any]:
        """Report a login and return the payload of the notice it made."""
        before = len(self.hook.received)
        await self.report(login, remote, device_id)
        received = await self.hook.wait_for(before + 1)
        return received[before]

    def metric(self, name: str, **labels: str) -> float:
        value = self.client.app[keys.METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def _sink(aiohttp_server: Any) -> Sink:
    sink = Sink()
    app = web.Application()
    app.router.add_post("/notify", sink.handle)
    server = await aiohttp_server(app)
    sink.url = str(server.make_url("/notify"))
    return sink


@pytest.fixture
async def owner() -> AsyncIterator[Callable[[str], Owner]]:
    sessions: list[ClientSession] = []

    def make(origin: str) -> Owner:
        # cookies for an IP host, as a browser keeps them
        session = ClientSession(cookie_jar=CookieJar(unsafe=True))
        sessions.append(session)
        return Owner(session, origin)

    yield make
    for session in sessions:
        await session.close()


@pytest.fixture
async def running(
    aiohttp_client: Any, aiohttp_server: Any, make_config: Callable[..., Config], tmp_path: Path
) -> Callable[..., Awaitable[Running]]:
    async def start(**sections: Any) -> Running:
        hook, admin = await _sink(aiohttp_server), await _sink(aiohttp_server)
        port = free_port()
        public_url = f"http://127.0.0.1:{port}/notice"
        out = tmp_path / "response.jsonl"
        program = tmp_path / "on-deny"
        program.write_text(f"#!/bin/sh\ncat >> {out}\n")
        program.chmod(program.stat().st_mode | stat.S_IXUSR)
        sections.setdefault(
            "web", {"listen": f"127.0.0.1:{port}", "public_url": public_url, "secret": SECRET}
        )
        sections.setdefault("response", {"command": [str(program)]})
        sections.setdefault(
            "channels",
            [
                {"type": "webhook", "name": "hook", "url": hook.url},
                {"type": "webhook", "name": "ops", "url": admin.url, "admin": True},
            ],
        )
        client: Client = await aiohttp_client(create_app(make_config(**sections)))
        return Running(client, hook, admin, public_url, out)

    return start


async def unusual_notice(svc: Running, login: str = "alice@example.jp") -> dict[str, Any]:
    first = await svc.notice(login, HOME)
    assert first["reasons"] == ["first_use"]
    notice = await svc.notice(login, ABROAD)
    assert set(notice["reasons"]) == {"new_country", "new_provider"}
    return notice


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    until = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < until, "not within the deadline"
        await asyncio.sleep(0.02)
