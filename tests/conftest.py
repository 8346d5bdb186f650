"""Shared fixtures: generated geo data, configs, and a real webhook sink."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from policy_server.config import Config, config_from_mapping

sys.path.insert(0, str(Path(__file__).parent))

from support import Sink, free_port

# the store fixtures: backend, store, postgres_schema
pytest_plugins = ("stores",)

# The machine running the tests may be busy; correctness, not speed, is asserted here.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


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
            # deliver at once and without a per-account limit unless a test turns them on
            "delivery": {"hold_s": 0, "throttle": []},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        }
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return config_from_mapping(data)

    return make


@pytest.fixture
async def sink(aiohttp_server: Any) -> AsyncIterator[Sink]:
    recorder = Sink()
    app = web.Application()
    app.router.add_post("/notify", recorder.handle)
    server = await aiohttp_server(app)
    recorder.url = str(server.make_url("/notify"))
    yield recorder
