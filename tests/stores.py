"""The stores under test: a fresh SQLite file, and PostgreSQL in a schema of its own.

The PostgreSQL cases run against ``postgresql://postgres@127.0.0.1:5432/test`` (override with
POLICY_SERVER_TEST_DSN), each test in a schema of its own that is dropped afterwards. When the
server is unreachable they are skipped, unless POLICY_SERVER_REQUIRE_POSTGRES=1 makes them fail.
The fixtures ``backend`` (both backends), ``store`` (one opened) and ``postgres_schema`` reach
every test module through conftest.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policy_server.config import StorageConfig
from policy_server.store import open_store
from policy_server.store.base import Store

DSN = os.environ.get("POLICY_SERVER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("POLICY_SERVER_REQUIRE_POSTGRES") == "1"


_reachable: dict[str, str | None] = {}


async def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    if "result" not in _reachable:
        try:
            import asyncpg
        except ImportError:
            _reachable["result"] = "asyncpg is not installed (pip install '.[postgres]')"
        else:
            try:
                conn = await asyncpg.connect(DSN, timeout=5)
                await conn.close()
                _reachable["result"] = None
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                _reachable["result"] = f"PostgreSQL at {DSN} is unreachable: {exc}"
    return _reachable["result"]


async def require_postgres() -> None:
    problem = await postgres_problem()
    if problem is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"{problem} (POLICY_SERVER_REQUIRE_POSTGRES=1)")
    pytest.skip(problem)


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@dataclass
class Backend:
    """How to open (and open again) the store under test."""

    name: str
    config: StorageConfig

    async def open(self) -> Store:
        return await open_store(self.config)


@pytest.fixture
async def postgres_schema() -> AsyncIterator[str]:
    await require_postgres()
    schema = f"t_{secrets.token_hex(8)}"
    try:
        yield schema
    finally:
        await drop_schema(schema)


def postgres_config(schema: str, **extra: Any) -> StorageConfig:
    return StorageConfig(
        backend="postgres", dsn=DSN, schema=schema, group_commit_wait_ms=1, **extra
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend(
            "sqlite", StorageConfig(path=str(tmp_path / "s.sqlite3"), group_commit_wait_ms=1)
        )
        return
    await require_postgres()
    schema = f"t_{secrets.token_hex(8)}"
    try:
        yield Backend("postgres", postgres_config(schema))
    finally:
        await drop_schema(schema)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = await backend.open()
    try:
        yield s
    finally:
        await s.close()
