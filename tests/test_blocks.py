"""Blocks of an origin enforced on ``allow``: through the HTTP API, across nodes sharing one
PostgreSQL schema, and made by the ``blocks`` commands as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from stores import postgres_config, require_postgres
from support import free_port, service_config

from policy_server.config import Config, GeoipConfig, load_config
from policy_server.origin.resolver import OriginResolver
from policy_server.service import keys
from policy_server.service.app import create_app
from policy_server.store.base import Block, BlockKind, BlockSource, BlockTarget

Client = TestClient[web.Request, web.Application]

REFUSED = {"status": -1, "msg": "login refused from this network; see your notice"}
ALLOWED = {"status": 0, "msg": ""}
# fixture geo data: 203.0.113.0/25 is AS64500 in JP, .128/25 AS64501 in JP, 198.51.100.0/24
# AS64510 in US
CARRIER_JP = BlockTarget(BlockKind.PROVIDER, "AS64500", "JP")
DAY = 86400.0


async def allow(client: Client, login: str, remote: str) -> Any:
    body = {"login": login, "remote": remote, "protocol": "imap", "tls": False}
    resp = await client.post("/?command=allow", data=json.dumps(body))
    assert resp.status == 200
    return await resp.json()


def operator_block(account: str, target: BlockTarget = CARRIER_JP) -> Block:
    now = time.time()
    return Block(account, target, now, now + DAY, BlockSource.OPERATOR)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Poll ``check`` until it holds, within ``timeout`` seconds; how long it took."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "not within the deadline"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def metric(client: Client, name: str) -> float:
    registry = client.app[keys.METRICS].registry
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


@pytest.fixture
async def service(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> Callable[..., Awaitable[Client]]:
    async def start(**sections: Any) -> Client:
        sections.setdefault("channels", [{"type": "log"}])
        client: Client = await aiohttp_client(create_app(make_config(**sections)))
        return client

    return start


async def test_a_blocked_provider_is_refused_for_that_account_only(service: Any) -> None:
    client = await service()
    # an empty set: answered at once as always
    assert await allow(client, "alice", "203.0.113.7") == ALLOWED
    blocks = client.app[keys.BLOCKS]
    await blocks.add(operator_block("alice"), time.time())
    # the account as the recorder names it: "Alice " is alice
    assert await allow(client, "Alice ", "203.0.113.7") == REFUSED
    # another network of the same provider in the same country: blocked too
    assert await allow(client, "alice", "203.0.113.100") == REFUSED
    # another provider (same country), another country
    assert await allow(client, "alice", "203.0.113.200") == ALLOWED
    assert await allow(client, "alice", "198.51.100.9") == ALLOWED
    # another account from the blocked provider
    assert await allow(client, "bob", "203.0.113.7") == ALLOWED
    assert metric(client, "policy_server_allow_refused_total") == 2
    assert metric(client, "policy_server_blocks_active") == 1
    assert await blocks.clear("alice") == 1
    assert await allow(client, "alice", "203.0.113.7") == ALLOWED
    assert metric(client, "policy_server_blocks_active") == 0


async def test_prefix_scope_and_an_expired_block(service: Any) -> None:
    client = await service(response={"block_scope": "prefix"})
    blocks = client.app[keys.BLOCKS]
    prefix = BlockTarget(BlockKind.PREFIX, "203.0.113.0/24")
    await blocks.add(operator_block("alice", prefix), time.time())
    assert await allow(client, "alice", "203.0.113.200") == REFUSED
    now = time.time()
    await blocks.add(Block("carol", prefix, now - 2 * DAY, now - DAY), now)
    assert await allow(client, "carol", "203.0.113.7") == ALLOWED


class Unreadable:
    """A country lookup whose every answer fails as a damaged file's would."""

    calls = 0

    def country(self, address: Any) -> Any:
        self.calls += 1
        raise RuntimeError("geo data unreadable")

    def describe(self) -> str:
        return "unreadable"

    def close(self) -> None:
        pass


async def test_a_failing_origin_lookup_answers_status_zero(service: Any) -> None:
    client = await service()
    await client.app[keys.BLOCKS].add(operator_block("alice"), time.time())
    assert await allow(client, "alice", "203.0.113.7") == REFUSED
    resolver = client.app[keys.RESOLVER]
    broken = Unreadable()
    working = resolver.take_data(OriginResolver(GeoipConfig(bundled=False), broken, None))
    # the lookup of this account's login raises: never refused on an error
    assert await allow(client, "alice", "203.0.113.7") == ALLOWED
    assert broken.calls == 1
    # an account without blocks is never looked up at all
    assert await allow(client, "bob", "203.0.113.7") == ALLOWED
    assert broken.calls == 1
    resolver.take_data(working)
    assert await allow(client, "alice", "203.0.113.7") == REFUSED


async def test_a_block_through_one_node_is_enforced_by_another(
    aiohttp_client: Any, make_config: Callable[..., Config], postgres_schema: str
) -> None:
    await require_postgres()
    storage = postgres_config(postgres_schema).model_dump()
    nodes: list[Client] = []
    for _ in range(2):
        config = make_config(storage=storage, channels=[{"type": "log"}])
        nodes.append(await aiohttp_client(create_app(config)))
    one, other = nodes
    assert await allow(other, "alice", "203.0.113.7") == ALLOWED
    await one.app[keys.BLOCKS].add(operator_block("alice"), time.time())
    assert await allow(one, "alice", "203.0.113.7") == REFUSED

    async def refused() -> bool:
        return bool(await allow(other, "alice", "203.0.113.7") == REFUSED)

    took = await eventually(refused)
    assert took < 5.0
    await one.app[keys.BLOCKS].clear("alice")

    async def allowed() -> bool:
        return bool(await allow(other, "alice", "203.0.113.7") == ALLOWED)

    await eventually(allowed)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policy_server", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_blocks_commands_reach_a_running_service(
    tmp_path: Path, geo_files: dict[str, Path], aiohttp_client: Any
) -> None:
    db = tmp_path / "store.sqlite3"
    path = service_config(
        tmp_path / "policy-server.toml",
        port=free_port(),
        geo=geo_files,
        storage={"path": str(db)},
        sink_url="http://127.0.0.1:9/notify",
    )
    client: Client = await aiohttp_client(create_app(load_config(path)))
    assert await allow(client, "alice", "203.0.113.7") == ALLOWED

    added = await asyncio.to_thread(
        cli, path, "blocks", "add", "Alice", "203.0.113.7", "--days", "3"
    )
    assert added.returncode == 0, added.stderr
    assert "blocked alice  provider AS64500 in JP  until" in added.stdout

    async def refused() -> bool:
        return bool(await allow(client, "alice", "203.0.113.7") == REFUSED)

    await eventually(refused)
    assert await allow(client, "alice", "198.51.100.9") == ALLOWED

    listed = await asyncio.to_thread(cli, path, "blocks", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("alice  provider AS64500 in JP")
    assert "1 block(s) in force" in listed.stderr
    shown = await asyncio.to_thread(cli, path, "history", "show", "alice")
    assert "blocks in force (1):" in shown.stdout and "provider AS64500 in JP" in shown.stdout

    wrong = await asyncio.to_thread(cli, path, "blocks", "add", "alice", "203.0.0.0/16")
    assert wrong.returncode == 1 and "/24 prefixes" in wrong.stderr
    none = await asyncio.to_thread(cli, path, "blocks", "clear", "alice", "198.51.100.0/24")
    assert none.returncode == 1 and "no block of alice covering 198.51.100.0/24" in none.stderr
    cleared = await asyncio.to_thread(cli, path, "blocks", "clear", "alice", "203.0.113.0/24")
    assert cleared.returncode == 0 and "cleared 1 block(s) of alice" in cleared.stdout

    async def allowed() -> bool:
        return bool(await allow(client, "alice", "203.0.113.7") == ALLOWED)

    await eventually(allowed)
    again = await asyncio.to_thread(cli, path, "blocks", "clear", "alice")
    assert again.returncode == 1 and "no block of alice" in again.stderr
