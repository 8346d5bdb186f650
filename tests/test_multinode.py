"""Several nodes on one PostgreSQL database: two ``serve --no-worker`` processes and a separate
``policy-server worker``, fed concurrent logins of the same accounts; one node killed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import Sink, free_port, service_config
from test_restart import Service

pytestmark = pytest.mark.slow

DSN = os.environ.get("POLICY_SERVER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("POLICY_SERVER_REQUIRE_POSTGRES") == "1"


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - the test extra installs it
        if REQUIRED:
            pytest.fail("POLICY_SERVER_REQUIRE_POSTGRES=1 but asyncpg is not installed")
        pytest.skip("asyncpg not installed (pip install '.[postgres]')")
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if REQUIRED:
            pytest.fail(f"POLICY_SERVER_REQUIRE_POSTGRES=1 but {DSN} is unreachable: {exc}")
        pytest.skip(
            f"PostgreSQL at {DSN} unreachable ({exc}); set POLICY_SERVER_REQUIRE_POSTGRES=1"
        )
    name = f"t_{secrets.token_hex(6)}"
    await conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
        await conn.close()


class Node(Service):
    """One process of the fleet: ``serve --no-worker`` or ``worker``."""

    def __init__(self, config: Path, port: int, log: Path, command: list[str]) -> None:
        super().__init__(config, port, log)
        self.command = command

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "policy_server", *self.command, "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
        )
        log.close()


def write_config(path: Path, port: int, schema: str, geo: dict[str, Path], sink: str) -> Path:
    return service_config(
        path,
        port=port,
        geo=geo,
        storage={"backend": "postgres", "dsn": DSN, "schema": schema},
        sink_url=sink,
        # answer only after the commit: an acknowledged login is a recorded one
        server={"request_budget_ms": 1900},
        queue={"lease_s": 5},
    )


async def query(schema: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_two_nodes_and_a_worker_lose_nothing_and_double_nothing(
    tmp_path: Path, geo_files: dict[str, Path], sink: Sink, schema: str
) -> None:
    ports = [free_port(), free_port()]
    nodes = [
        Node(
            write_config(tmp_path / f"node{i}.toml", port, schema, geo_files, sink.url),
            port,
            tmp_path / f"node{i}.log",
            ["serve", "--no-worker"],
        )
        for i, port in enumerate(ports)
    ]
    worker = Node(tmp_path / "node0.toml", 0, tmp_path / "worker.log", ["worker"])
    migrate = subprocess.run(
        [sys.executable, "-m", "policy_server", "migrate", "-c", str(tmp_path / "node0.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    for node in nodes:
        node.start()
    worker.start()
    try:
        for node in nodes:
            await node.ready()
        accounts = [f"user{i}" for i in range(40)]
        acknowledged: list[tuple[str, str]] = []

        async def login(
            session: aiohttp.ClientSession, node: Node, account: str, remote: str
        ) -> None:
            body = {"login": account, "remote": remote, "protocol": "imap", "success": True}
            try:
                async with session.post(node.url("report"), data=json.dumps(body)) as resp:
                    await resp.read()
                    if resp.status == 200:
                        acknowledged.append((account, remote))
            except aiohttp.ClientError:
                pass  # the node was killed: Dovecot would have failed open, unrecorded

        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            # every account from two countries at once, one address on each node
            await asyncio.gather(
                *(
                    login(session, nodes[i % 2], account, remote)
                    for account in accounts
                    for i, remote in enumerate(("203.0.113.7", "198.51.100.9"))
                )
            )
            # then a third origin each, while node 1 is killed in the middle of it
            third = [
                login(session, nodes[i % 2], account, "192.0.2.5")
                for i, account in enumerate(accounts)
            ]

            async def kill_soon() -> None:
                await asyncio.sleep(0.05)
                assert nodes[1].proc is not None
                nodes[1].proc.send_signal(signal.SIGKILL)

            await asyncio.gather(*third, kill_soon())

        origins = await query(schema, "SELECT account, prefix FROM origins")
        recorded = {(r["account"], r["prefix"]) for r in origins}
        prefix = {"203.0.113.7": "203.0.113.0/24", "198.51.100.9": "198.51.100.0/24",
                  "192.0.2.5": "192.0.2.0/24"}  # fmt: skip
        missing = [(a, r) for a, r in acknowledged if (a, prefix[r]) not in recorded]
        assert missing == []

        notices = await query(schema, "SELECT id, account, reasons::text AS reasons FROM notices")
        per_account: dict[str, list[str]] = {}
        for row in notices:
            per_account.setdefault(row["account"], []).append(row["reasons"])
        for account in accounts:
            firsts = [r for r in per_account.get(account, []) if "first_use" in r]
            assert len(firsts) == 1, (account, per_account.get(account))

        # every notice delivered (or carried in another) once, by the separate worker
        for _ in range(300):
            rows = await query(
                schema, "SELECT count(*) AS n FROM deliveries WHERE status IN ('sent', 'folded')"
            )
            if rows[0]["n"] == len(notices):
                break
            await asyncio.sleep(0.1)
        assert rows[0]["n"] == len(notices)
        ids = [n["id"] for n in sink.received]
        assert len(ids) == len(set(ids))
        sent = await query(schema, "SELECT notice_id FROM deliveries WHERE status = 'sent'")
        assert set(ids) == {r["notice_id"] for r in sent}
    finally:
        for node in [*nodes, worker]:
            node.stop()
