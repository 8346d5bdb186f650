"""Never a notification storm: the fleet-wide breaker, the pause switch, dry run, the geo guard."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from geodata import STANDARD_NETWORKS, Network, write_asn_mmdb, write_country_mmdb
from support import Sink
from test_delivery import report

from policy_server.commands.control import breaker_close, breaker_status, set_pause
from policy_server.commands.import_log import record_history
from policy_server.commands.outbox import outbox_discard, outbox_held, outbox_release
from policy_server.config import BreakerConfig, Config
from policy_server.delivery.breaker import BREAKER, GEO_HOLD, check
from policy_server.events import Event
from policy_server.model import Command, LoginEvent
from policy_server.service import keys
from policy_server.service.app import create_app, reload_geo
from policy_server.store import open_store
from policy_server.store.base import HeldFilter, NoticeRates

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def admin_sink(aiohttp_server: Any) -> AsyncIterator[Sink]:
    recorder = Sink()
    app = web.Application()
    app.router.add_post("/alerts", recorder.handle)
    server = await aiohttp_server(app)
    recorder.url = str(server.make_url("/alerts"))
    yield recorder


def channels(sink: Sink, admin: Sink) -> list[dict[str, Any]]:
    return [
        {"type": "webhook", "name": "owners", "url": sink.url},
        {"type": "webhook", "name": "ops", "url": admin.url, "admin": True},
    ]


def rows(config: Config, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(config.storage.path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


async def post(client: Client, login: str, remote: str) -> None:
    response = await client.post("/?command=report", data=report(login=login, remote=remote))
    assert response.status == 200


async def run(command: Callable[..., Any], *args: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = await command(*args, out=out)
    return code, out.getvalue()


async def until(check_: Callable[[], bool], what: str, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if check_():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


# -- the trip conditions -----------------------------------------------------------------------


def rates(window: int, baseline: int = 0, span: float = 0.0, **top: Any) -> NoticeRates:
    return NoticeRates(
        window=window,
        baseline=baseline,
        baseline_span_s=span,
        by_reason={"new_provider": window},
        top_provider=top.get("provider"),
        top_provider_accounts=top.get("provider_accounts", 0),
        top_country=top.get("country"),
        top_country_accounts=top.get("country_accounts", 0),
    )


def test_trip_conditions() -> None:
    config = BreakerConfig(window_s=600, factor=10, min_notices=50, cap=1000)
    day = 86400.0
    # a steady 20 per window, then 250: over 10x the baseline
    assert check(rates(250, baseline=20 * 143, span=day - 600), config) is not None
    assert check(rates(150, baseline=20 * 143, span=day - 600), config) is None
    # a small bump on a quiet system does not trip, however many times the baseline it is
    assert check(rates(40, baseline=1, span=day - 600), config) is None
    # no history yet: only the cap and the same-origin rule apply
    assert check(rates(999), config) is None
    trip = check(rates(1001), config)
    assert trip is not None and "cap 1000" in trip.cause
    trip = check(rates(30, provider="AS64999", provider_accounts=26), config)
    assert trip is not None and trip.numbers["provider"] == "AS64999"
    trip = check(rates(30, country="KP", country_accounts=30), config)
    assert trip is not None and "new country KP" in trip.cause


# -- the incident ------------------------------------------------------------------------------


async def test_a_storm_is_held_the_admin_told_once_and_a_real_case_kept(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink, admin_sink: Sink
) -> None:
    cap = 30
    config = make_config(
        delivery={"hold_s": 1.5, "throttle": []},
        breaker={"window_s": 120, "cap": cap, "same_origin_accounts": 10, "close_after_s": 0},
        channels=channels(sink, admin_sink),
    )
    client: Client = await aiohttp_client(create_app(config))
    store, recorder = client.app[keys.STORE], client.app[keys.RECORDER]
    now = time.time()

    # a steady past: 60 accounts, each with its usual carrier, over the last hour
    accounts = [f"user{i}" for i in range(60)]
    past = [
        Event(name, f"203.0.113.{i % 100 + 1}", "imap", True, now - 3600 + i * 30)
        for i, name in enumerate(accounts)
    ]
    await record_history(store, client.app[keys.RESOLVER], config, past)
    # and the usual trickle of real notices: a few accounts seen from the US
    for i in range(3):
        event = LoginEvent(Command.REPORT, accounts[i], "198.51.100.9", "imap", success=True)
        await recorder.report(event, at=now - 1800 + i * 600)
    await sink.wait_for(3)

    # the morning of the incident: every account at once resolves to unknown or to one new
    # provider, as after a broken database or a proxy change
    for i, name in enumerate(accounts):
        await post(client, name, "198.18.0.1" if i % 2 else "203.0.113.200")
    # and, in the middle of it, one account really logs in from a new country
    await post(client, "victim-account", "203.0.113.7")  # its first use, before the storm
    await post(client, "victim-account", "192.0.2.55")

    await until(lambda: len(admin_sink.received) >= 1, "the admin alert")
    await until(
        lambda: rows(config, "SELECT count(*) FROM deliveries WHERE status = 'queued'") == [(0,)],
        "every queued delivery settled",
    )
    await asyncio.sleep(2.0)  # past the hold: anything not held would have gone out by now
    storm = [n for n in sink.received[3:] if n["login"] in accounts]
    assert len(storm) <= cap
    assert storm == []  # the breaker opened before the first of them was due
    (alert,) = admin_sink.received
    assert "same new provider AS64501" in alert["message"]
    assert "Queued notices held now" in alert["message"]

    held = rows(
        config,
        "SELECT n.account, d.status FROM deliveries d JOIN notices n ON n.id = d.notice_id"
        " WHERE n.account = 'victim-account' AND json_extract(n.payload, '$.country') = 'DE'",
    )
    assert held == [("victim-account", "held")]

    code, text = await run(outbox_held, config, HeldFilter())
    assert code == 0
    assert "AS64501                  30" in text
    assert "new_country              1" in text
    assert "DE                       1" in text
    code, text = await run(breaker_status, config)
    assert "breaker: OPEN since" in text and "same new provider AS64501" in text

    # the one real case is released and delivered; the storm is discarded, with a record
    code, _ = await run(outbox_release, config, HeldFilter(account="victim-account"))
    assert code == 0
    await until(
        lambda: any(n["login"] == "victim-account" and n["country"] == "DE" for n in sink.received),
        "the released notice",
    )
    code, text = await run(outbox_discard, config, HeldFilter(provider="AS64501"))
    assert code == 0 and "discarded 30 held deliveries (discarded by" in text
    assert rows(config, "SELECT count(*) FROM deliveries WHERE status = 'held'") == [(0,)]
    assert len(admin_sink.received) == 1  # told once, not once per notice


async def test_breaker_state_survives_a_restart(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink, admin_sink: Sink
) -> None:
    config = make_config(
        breaker={"cap": 3, "close_after_s": 0}, channels=channels(sink, admin_sink)
    )
    client: Client = await aiohttp_client(create_app(config))
    for i in range(4):
        await post(client, f"u{i}", "203.0.113.7")
    await until(lambda: len(admin_sink.received) == 1, "the alert")
    await client.close()

    client = await aiohttp_client(create_app(config))
    before = len(sink.received)
    await post(client, "late", "192.0.2.1")
    await until(
        lambda: (
            rows(
                config,
                "SELECT d.status FROM deliveries d JOIN notices n"
                " ON n.id = d.notice_id WHERE n.account = 'late'",
            )
            == [("held",)]
        ),
        "the new notice held",
    )
    assert len(sink.received) == before
    assert len(admin_sink.received) == 1  # still open: no second alert
    _code, text = await run(breaker_close, config)
    assert "breaker closed" in text
    await post(client, "later", "192.0.2.1")
    await until(lambda: any(n["login"] == "later" for n in sink.received), "delivery again")


# -- the kill switch and dry run ---------------------------------------------------------------


async def test_pause_and_resume_survive_restarts(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(channels=[{"type": "webhook", "url": sink.url}])
    code, text = await run(set_pause, config, True)
    assert (code, text) == (0, "owner notices paused\n")
    client: Client = await aiohttp_client(create_app(config))
    await post(client, "alice", "203.0.113.7")
    await asyncio.sleep(0.5)
    assert sink.received == []
    assert rows(config, "SELECT status FROM deliveries") == [("queued",)]
    code, text = await run(breaker_status, config)
    assert "owner notices: PAUSED by" in text
    await run(set_pause, config, False)  # from another process, as an operator would
    (notice,) = await sink.wait_for(1)
    assert notice["login"] == "alice"


async def test_dry_run_renders_and_sends_nothing(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(
        delivery={"hold_s": 0, "throttle": [], "dry_run": True},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    client: Client = await aiohttp_client(create_app(config))
    await post(client, "alice", "203.0.113.7")
    await post(client, "bob", "203.0.113.7")
    await until(
        lambda: (
            rows(config, "SELECT status, count(*) FROM deliveries GROUP BY status")
            == [("shadow", 2)]
        ),
        "both notices shadowed",
    )
    assert sink.received == []
    assert await client.app[keys.STORE].outbox_counts() == {"shadow": 2}


# -- the geo-data guard ------------------------------------------------------------------------


def replace_geo(directory: Path, networks: list[Network]) -> None:
    """New files put in place by rename, as geoipupdate does (readers keep the old ones)."""
    write_country_mmdb(directory / "country.mmdb.new", networks)
    write_asn_mmdb(directory / "asn.mmdb.new", networks)
    (directory / "country.mmdb.new").replace(directory / "country.mmdb")
    (directory / "asn.mmdb.new").replace(directory / "asn.mmdb")


def broken_geo(directory: Path) -> None:
    """The standard networks, but every one of them now "in" a new country and AS."""
    replace_geo(directory, [Network(n.cidr, "KP", 64999, "Broken Data") for n in STANDARD_NETWORKS])


async def seed_history(config: Config) -> None:
    """Known origins for 40 accounts, and the geo files recorded as accepted."""
    from policy_server.origin.resolver import OriginResolver

    store = await open_store(config.storage)
    resolver = OriginResolver.from_config(config.geoip)
    try:
        now = time.time()
        events = [
            Event(f"user{i}", f"203.0.113.{i + 1}" if i % 2 else "198.51.100.7", "imap", True, now)
            for i in range(40)
        ]
        await record_history(store, resolver, config, events)
        from policy_server.delivery.geo_guard import GEO_FILES, fingerprint

        await store.set_control(GEO_FILES, {"files": fingerprint(config.geoip)}, now)
    finally:
        await store.close()
        resolver.close()


async def test_changed_geo_data_is_held_at_start(
    aiohttp_client: Any,
    make_config: Callable[..., Config],
    sink: Sink,
    admin_sink: Sink,
    tmp_path: Path,
) -> None:
    geo = tmp_path / "geo"
    shutil.copytree(Path(make_config().geoip.country_db).parent, geo)
    config = make_config(
        geoip={"country_db": str(geo / "country.mmdb"), "asn_db": str(geo / "asn.mmdb")},
        channels=channels(sink, admin_sink),
    )
    await seed_history(config)
    broken_geo(geo)  # the weekly update goes wrong
    client: Client = await aiohttp_client(create_app(config))
    (alert,) = admin_sink.received
    assert "40 of 40 known origins (100%) would change" in alert["message"]
    await post(client, "user1", "203.0.113.2")  # now "KP AS64999": new to everyone
    await until(lambda: rows(config, "SELECT status FROM deliveries") == [("held",)], "held notice")
    assert sink.received == []
    store = client.app[keys.STORE]
    assert (await store.control(GEO_HOLD) or {}).get("hold") is True
    _code, text = await run(breaker_close, config)
    assert "geo data accepted, hold ended" in text
    assert (await store.control(GEO_HOLD) or {}).get("hold") is False
    assert (await store.control(BREAKER) or {}).get("state") != "open"


async def test_reload_refuses_broken_geo_data_and_keeps_the_old(
    aiohttp_client: Any,
    make_config: Callable[..., Config],
    sink: Sink,
    admin_sink: Sink,
    tmp_path: Path,
) -> None:
    geo = tmp_path / "geo"
    shutil.copytree(Path(make_config().geoip.country_db).parent, geo)
    config = make_config(
        geoip={"country_db": str(geo / "country.mmdb"), "asn_db": str(geo / "asn.mmdb")},
        channels=channels(sink, admin_sink),
    )
    await seed_history(config)
    client: Client = await aiohttp_client(create_app(config))
    assert admin_sink.received == []
    resolver = client.app[keys.RESOLVER]
    assert resolver.resolve("203.0.113.2").country == "JP"

    broken_geo(geo)
    assert await reload_geo(client.app) is False
    assert resolver.resolve("203.0.113.2").country == "JP"  # the old data stays
    (alert,) = admin_sink.received
    assert "refused" in alert["message"]

    # a sound update is taken
    fixed = [Network(n.cidr, n.country, n.asn, n.as_org, n.city) for n in STANDARD_NETWORKS] + [
        Network("100.64.0.0/10", "JP", 64500, "Example Carrier JP", None)
    ]
    write_country_mmdb(geo / "country.mmdb", fixed)
    write_asn_mmdb(geo / "asn.mmdb", fixed)
    assert await reload_geo(client.app) is True
    assert resolver.resolve("100.64.1.1").country == "JP"
    await post(client, "user1", "203.0.113.2")
    await post(client, "newbie", "203.0.113.2")
    (notice,) = await sink.wait_for(1)
    assert notice["login"] == "newbie"


async def test_reload_keeps_the_old_data_when_a_file_cannot_be_read(
    aiohttp_client: Any, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    geo = tmp_path / "geo"
    shutil.copytree(Path(make_config().geoip.country_db).parent, geo)
    config = make_config(
        geoip={"country_db": str(geo / "country.mmdb"), "asn_db": str(geo / "asn.mmdb")}
    )
    client: Client = await aiohttp_client(create_app(config))
    resolver = client.app[keys.RESOLVER]
    # a broken file put in place by rename, as updaters do
    (geo / "country.mmdb.new").write_bytes(b"not a database")
    (geo / "country.mmdb.new").replace(geo / "country.mmdb")
    assert await reload_geo(client.app) is False
    assert resolver.resolve("203.0.113.2").country == "JP"


async def test_a_released_notice_that_fails_once_is_retried_not_held_again(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink, admin_sink: Sink
) -> None:
    config = make_config(
        breaker={"cap": 1, "close_after_s": 0},
        delivery={"hold_s": 0.5, "throttle": []},
        channels=channels(sink, admin_sink),
    )
    client: Client = await aiohttp_client(create_app(config))
    for name in ("u0", "u1"):
        await post(client, name, "203.0.113.7")
    await until(lambda: len(admin_sink.received) == 1, "the breaker to open")
    await until(
        lambda: (
            rows(config, "SELECT count(*) FROM deliveries WHERE status = 'held'") == [(2,)]
            or rows(config, "SELECT count(*) FROM deliveries WHERE status = 'sent'") != [(0,)]
        ),
        "the notices held",
    )
    sent_before = len(sink.received)
    sink.script = [503]  # the receiver fails the first attempt
    code, _ = await run(outbox_release, config, HeldFilter(account="u0"))
    assert code == 0
    await until(
        lambda: (
            rows(
                config,
                "SELECT d.status FROM deliveries d JOIN notices n ON n.id = d.notice_id"
                " WHERE n.account = 'u0'",
            )
            == [("sent",)]
        ),
        "the released notice delivered after its retry",
    )
    tries = [n for n in sink.received[sent_before:] if n["login"] == "u0"]
    assert len(tries) == 2 and tries[0]["id"] == tries[1]["id"]
