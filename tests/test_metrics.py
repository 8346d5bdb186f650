"""Prometheus metrics and the health checks, on their own listener."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from support import Sink
from test_delivery import report

from policy_server.config import Config
from policy_server.service import keys
from policy_server.service.app import create_app

Client = TestClient[web.Request, web.Application]


def value(text: str, name: str, **labels: str) -> float:
    """One sample of the exposition text (0 when absent)."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + ("{" + inner + "}" if labels else "")) + r" ([0-9.e+-]+)\n"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


async def get(config: Config, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{config.metrics.listen}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def test_requests_decisions_origins_and_deliveries_are_counted(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(channels=[{"type": "webhook", "name": "hook", "url": sink.url}])
    client: Client = await aiohttp_client(create_app(config))
    allow = json.dumps({"login": "a", "remote": "203.0.113.7", "protocol": "imap"})
    assert (await client.post("/?command=allow", data=allow)).status == 200
    assert (await client.post("/?command=report", data=report(login="a"))).status == 200
    assert (
        await client.post("/?command=report", data=report(login="b", remote="198.18.0.1"))
    ).status == 200
    assert (await client.post("/?command=allow", data=b"not json")).status == 400
    await sink.wait_for(1)
    await asyncio.sleep(0.2)

    status, text = await get(config, "/metrics")
    assert status == 200
    assert value(text, "policy_server_requests_total", command="allow", outcome="ok") == 1
    assert value(text, "policy_server_requests_total", command="report", outcome="notice") == 2
    assert value(text, "policy_server_requests_total", command="allow", outcome="invalid_json") == 1
    assert value(text, "policy_server_request_seconds_count", command="report") == 2
    # every answer is timed, a refused one too, each under its command's series
    assert value(text, "policy_server_request_seconds_count", command="allow") == 2
    assert value(text, "policy_server_decisions_total", reason="first_use") == 2
    # 198.18.0.1 is in no geo data: unknown country and provider
    assert value(text, "policy_server_origin_unknown_total", part="country") == 1
    assert value(text, "policy_server_origin_unknown_total", part="provider") == 1
    assert value(text, "policy_server_notices_queued_total") == 2
    assert value(text, "policy_server_deliveries_total", channel="hook", outcome="sent") >= 1
    assert value(text, "policy_server_breaker_open") == 0
    assert value(text, "policy_server_geo_data_age_seconds", part="country") >= 0
    assert "policy_server_queue_depth" in text


async def test_health_and_readiness(
    aiohttp_client: Any, make_config: Callable[..., Config], tmp_path: Any
) -> None:
    config = make_config()
    client: Client = await aiohttp_client(create_app(config))
    assert await get(config, "/healthz") == (200, '{"status": "ok"}')
    status, text = await get(config, "/readyz")
    assert (status, json.loads(text)) == (200, {"status": "ready"})
    await client.app[keys.STORE].close()  # as if the database went away
    status, text = await get(config, "/readyz")
    assert status == 503
    assert "store" in json.loads(text)["problems"]
    assert (await get(config, "/healthz"))[0] == 200  # alive all the same


async def test_a_geo_file_that_did_not_load_is_not_ready(
    aiohttp_client: Any, make_config: Callable[..., Config], tmp_path: Any
) -> None:
    config = make_config(geoip={"country_db": str(tmp_path / "absent.mmdb")})
    await aiohttp_client(create_app(config))
    status, text = await get(config, "/readyz")
    assert status == 503
    assert "absent.mmdb not loaded" in json.loads(text)["problems"]["geo"]


async def test_monitoring_can_be_turned_off(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    config = make_config(metrics={"enabled": False})
    await aiohttp_client(create_app(config))
    try:
        await get(config, "/healthz")
    except aiohttp.ClientConnectionError:
        return
    raise AssertionError("something answered on the metrics port")
