"""The readiness gauges: every scrape and every /readyz runs the checks and sets them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_metrics import value

from policy_server.config import Config
from policy_server.service import keys
from policy_server.service.app import create_app
from policy_server.service.metrics import Metrics, monitoring_app
from policy_server.store import open_store
from policy_server.store.base import Store

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def sqlite_store(make_config: Callable[..., Config]) -> AsyncIterator[Store]:
    store = await open_store(make_config().storage)
    yield store
    await store.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_scrape_sets_ready_and_each_component(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    app = create_app(config)
    await aiohttp_client(app)
    metrics: Metrics = app[keys.METRICS]
    monitoring: Client = await aiohttp_client(
        monitoring_app(metrics, app[keys.STORE], {"geo": lambda: ""})
    )
    text = await (await monitoring.get("/metrics")).text()
    assert value(text, "policy_server_ready") == 1
    assert value(text, "policy_server_component_up", component="store") == 1
    assert value(text, "policy_server_component_up", component="geo") == 1

    await app[keys.STORE].close()  # as if the database went away
    text = await (await monitoring.get("/metrics")).text()
    assert value(text, "policy_server_ready") == 0
    assert value(text, "policy_server_component_up", component="store") == 0
    assert value(text, "policy_server_component_up", component="geo") == 1


async def test_readyz_sets_the_gauges_too_and_a_check_that_raises_is_a_problem(
    aiohttp_client: Any, sqlite_store: Store
) -> None:
    metrics = Metrics()
    state = {"writer": ""}

    def broken() -> str:
        raise RuntimeError("a bug in the check")

    checks = {"writer": lambda: state["writer"], "worker": broken}
    client: Client = await aiohttp_client(monitoring_app(metrics, sqlite_store, checks))

    resp = await client.get("/readyz")
    assert resp.status == 503
    problems = json.loads(await resp.text())["problems"]
    assert problems == {"worker": "check failed: RuntimeError: a bug in the check"}
    assert sample(metrics, "policy_server_ready") == 0
    assert sample(metrics, "policy_server_component_up", component="worker") == 0
    assert sample(metrics, "policy_server_component_up", component="writer") == 1
    assert sample(metrics, "policy_server_component_up", component="store") == 1

    checks["worker"] = lambda: ""
    assert (await client.get("/readyz")).status == 200
    assert sample(metrics, "policy_server_ready") == 1
    assert sample(metrics, "policy_server_component_up", component="worker") == 1

    state["writer"] = "group-commit writer stopped"
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert json.loads(await resp.text())["problems"] == {"writer": "group-commit writer stopped"}
    assert sample(metrics, "policy_server_ready") == 0
    assert sample(metrics, "policy_server_component_up", component="writer") == 0
