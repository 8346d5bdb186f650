"""History tools: bootstrap from logs, decisions explained, export and forget, retention,
known networks, and replay of past logins through a candidate config."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support import Sink
from test_delivery import report

from policy_server.commands.history import history_export, history_forget, history_show
from policy_server.commands.import_log import import_logs
from policy_server.commands.replay import format_side_by_side, replay, replay_configs
from policy_server.config import Config
from policy_server.events import Event, read_events
from policy_server.origin.networks import KnownNetworks, NetworksError
from policy_server.service import keys
from policy_server.service.app import create_app
from policy_server.store import open_store
from policy_server.store.base import Contact, SuccessfulLogin

Client = TestClient[web.Request, web.Application]
LOGS = Path(__file__).parent / "data" / "dovecot-logins.log"
TOKYO = ZoneInfo("Asia/Tokyo")
DAY = 86400.0


def rows(config: Config, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(config.storage.path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


async def start(aiohttp_client: Any, config: Config) -> Client:
    client: Client = await aiohttp_client(create_app(config))
    return client


async def post(client: Client, **fields: Any) -> None:
    body = json.loads(report(**{k: v for k, v in fields.items() if k != "extra"}))
    body.update(fields.get("extra", {}))
    response = await client.post("/?command=report", data=json.dumps(body))
    assert response.status == 200


async def output(command: Callable[..., Any], *args: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = await command(*args, out=out)
    return code, out.getvalue()


# -- bootstrap ---------------------------------------------------------------------------------


async def test_import_log_builds_history_without_notices(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(channels=[{"type": "webhook", "url": sink.url}])
    stats = await import_logs(config, [LOGS], TOKYO)
    assert (stats.recorded, stats.accounts) == (6, 3)
    assert rows(config, "SELECT count(*) FROM notices") == [(0,)]
    assert rows(config, "SELECT count(*) FROM decisions") == [(0,)]
    assert rows(
        config,
        "SELECT prefix, country, provider, count FROM origins WHERE account = ?"
        " ORDER BY first_seen",
        "alice@example.jp",
    ) == [("203.0.113.0/24", "JP", "AS64500", 1), ("192.0.2.0/24", "DE", "AS64520", 1)]
    # first and last seen are the log's times, not the import's
    ((first, last),) = rows(
        config, "SELECT first_seen, last_seen FROM accounts WHERE account = 'alice@example.jp'"
    )
    assert time.time() - first > 20 * DAY or first < last

    client = await start(aiohttp_client, config)
    # day one: the usual places are known, so nothing is sent for them
    await post(client, login="alice@example.jp", remote="203.0.113.50")
    await post(client, login="bob", remote="198.51.100.77")
    await post(client, login="carol@example.jp", remote="2001:db8:1::99")
    await post(client, login="bob", remote="203.0.113.9")  # new for bob: JP, AS64500
    (notice,) = await sink.wait_for(1)
    assert (notice["login"], notice["reasons"]) == ("bob", ["new_country", "new_provider"])
    await asyncio.sleep(0.3)
    assert len(sink.received) == 1


# -- explainability, export, forget ------------------------------------------------------------


async def test_decisions_are_explained_and_exported(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(
        policy={"learning_logins": 3},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    client = await start(aiohttp_client, config)
    secret = "{SSHA512}cGFzc3dvcmQtaGFzaA=="
    await post(client, login="alice", remote="203.0.113.7", extra={"pwhash": secret})
    await post(client, login="alice", remote="198.51.100.9")  # learning: 1 login recorded
    await sink.wait_for(1)
    await client.app[keys.STORE].upsert_contacts(
        [Contact("alice", "a@example.jp", None, "en", "Europe/Paris")], time.time()
    )

    code, text = await output(history_show, config, "ALICE")
    assert code == 0
    assert "203.0.113.0/24       JP  AS64500" in text
    assert "198.51.100.0/24      US  AS64510" in text
    assert "first_use  notified" in text
    assert "new_country,new_provider  not notified (learning)" in text
    assert "contact: email a@example.jp, language en, timezone Europe/Paris" in text

    code, text = await output(history_export, config, "alice")
    exported = json.loads(text)
    assert code == 0
    assert exported["account"]["account"] == "alice"
    assert exported["account"]["first_seen"].endswith("+00:00")
    assert {o["prefix"] for o in exported["origins"]} == {"203.0.113.0/24", "198.51.100.0/24"}
    assert [d["reasons"] for d in exported["decisions"]] == [
        ["new_country", "new_provider"],
        ["first_use"],
    ]
    assert exported["notices"][0]["reasons"] == ["first_use"]
    assert exported["notices"][0]["history"] == []
    assert exported["contact"]["email"] == "a@example.jp"

    # pwhash is read from the request and dropped: not in the store, not in any log
    await client.close()
    for path in Path(config.storage.path).parent.glob("store.sqlite3*"):
        assert secret.encode() not in path.read_bytes()

    code, _ = await output(history_show, config, "nobody")
    assert code == 1


async def test_forget_removes_the_account_and_nothing_else(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    config = make_config(channels=[{"type": "webhook", "url": sink.url}])
    client = await start(aiohttp_client, config)
    for login in ("alice", "bob"):
        await post(client, login=login, remote="203.0.113.7")
        await post(client, login=login, remote="198.51.100.9")
    # two notices each; the second may go out carrying the first (folded)
    await sink.wait_for(2)
    for _ in range(100):
        settled = rows(config, "SELECT count(*) FROM deliveries WHERE status IN ('sent', 'folded')")
        if settled == [(4,)]:
            break
        await asyncio.sleep(0.05)
    await client.app[keys.STORE].upsert_contacts(
        [Contact("alice", "a@example.jp", None, None, None)], time.time()
    )
    await client.close()

    code, text = await output(history_forget, config, "Alice")
    assert code == 0
    assert "2 origins" in text and "2 notices" in text and "1 contacts" in text
    for table in ("accounts", "origins", "notices", "decisions", "contacts"):
        left = rows(config, f"SELECT DISTINCT account FROM {table}")
        assert left == ([] if table == "contacts" else [("bob",)]), table
    assert rows(config, "SELECT count(*) FROM deliveries") == [(2,)]  # bob's two
    code, _ = await output(history_forget, config, "alice")
    assert code == 1


# -- retention and aging -----------------------------------------------------------------------


async def test_housekeeping_cuts_old_addresses_and_purges_forgotten_origins(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    store = await open_store(config.storage)
    resolver_origin = {
        "203.0.113.7": ("203.0.113.0/24", "JP", 64500),
        "198.51.100.9": ("198.51.100.0/24", "US", 64510),
    }
    from policy_server.model import AddressClass, Origin
    from policy_server.policy import decide

    now = time.time()

    async def login(account: str, remote: str, at: float) -> None:
        prefix, country, asn = resolver_origin[remote]
        origin = Origin(remote, AddressClass.GLOBAL, prefix, country, asn, None)
        await store.record_success(
            SuccessfulLogin(account, account, "imap", remote, origin, at),
            lambda h, o, t, c: decide(h, o, t, config.policy, c),
            ["log"],
            touch_after=0,
            deadline_s=DAY,
        )

    try:
        await login("old", "203.0.113.7", now - 400 * DAY)
        await login("old", "198.51.100.9", now - 1 * DAY)  # 399 days later, elsewhere
        await login("idle", "203.0.113.7", now - 500 * DAY)  # idle since: keeps its origin
        await login("recent", "198.51.100.9", now - 3600)
        counts = await store.housekeeping(now, 30 * DAY, 365 * DAY)
    finally:
        await store.close()
    assert counts == {"addresses_cut": 2, "origins_purged": 1}
    remotes = dict(
        rows(
            config,
            "SELECT account || ':' || created, json_extract(payload, '$.remote') FROM notices",
        )
    )
    # the two notices older than 30 days keep only the prefix
    assert sorted(remotes.values()) == [
        "198.51.100.9",
        "198.51.100.9",
        "203.0.113.0/24",
        "203.0.113.0/24",
    ]
    assert rows(config, "SELECT account, prefix FROM origins ORDER BY account") == [
        ("idle", "203.0.113.0/24"),
        ("old", "198.51.100.0/24"),
        ("recent", "198.51.100.0/24"),
    ]


# -- known networks ----------------------------------------------------------------------------


def test_network_lists_are_checked_line_by_line(tmp_path: Path) -> None:
    networks = KnownNetworks.parse(
        [
            ("f", 1, "# comment"),
            ("f", 2, "192.0.2.0/24 trusted Head office  # inline comment"),
            ("f", 3, "192.0.2.128/25 vpn"),
            ("f", 4, "AS64510 mail-app Fetchers"),
            ("f", 5, "2001:db8:2::/48 hosting"),
        ]
    )
    from ipaddress import ip_address

    found = networks.match(ip_address("192.0.2.200"), None)
    assert found is not None and (found.category, found.label) == ("vpn", "")  # most specific
    found = networks.match(ip_address("192.0.2.1"), None)
    assert found is not None and (found.category, found.label) == ("trusted", "Head office")
    found = networks.match(ip_address("198.51.100.1"), 64510)
    assert found is not None and found.category == "mail-app"
    assert networks.match(ip_address("198.51.100.1"), 64500) is None
    with pytest.raises(NetworksError) as info:
        KnownNetworks.parse([("f", 7, "10.0.0.0/8 friendly"), ("f", 8, "nonsense trusted")])
    assert info.value.problems == [
        "f:7: unknown category 'friendly' (use trusted, vpn, hosting, mail-app, corporate)",
        "f:8: 'nonsense' is neither a CIDR nor an AS number",
    ]


async def test_known_networks_change_decisions_and_reload_on_sighup(
    aiohttp_client: Any,
    make_config: Callable[..., Config],
    sink: Sink,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lists = tmp_path / "networks.txt"
    lists.write_text("192.0.2.0/24 trusted Head office\nAS64510 vpn Example VPN\n", "utf-8")
    config = make_config(
        networks={"files": [str(lists)]},
        channels=[{"type": "webhook", "url": sink.url}],
        message={"language": "en"},
    )
    client = await start(aiohttp_client, config)
    await post(client, login="alice", remote="203.0.113.7")  # first use
    await sink.wait_for(1)  # sent before the next, so it is not folded into it
    await post(client, login="alice", remote="192.0.2.5")  # office: trusted
    await post(client, login="alice", remote="198.51.100.9")  # US, through the VPN
    first, vpn = await sink.wait_for(2)
    assert first["reasons"] == ["first_use"]
    assert (vpn["reasons"], vpn["country"]) == (["via_vpn"], "US")
    assert "through a VPN service (Example VPN). If you use this VPN" in vpn["message"]
    assert "from the country/region below" not in vpn["message"]
    assert (vpn["network"], vpn["network_label"]) == ("vpn", "Example VPN")
    assert rows(config, "SELECT note FROM decisions WHERE prefix = '192.0.2.0/24'") == [
        ("trusted network Head office",)
    ]

    # the office is no longer trusted after a reload
    lists.write_text("AS64510 vpn Example VPN\n", "utf-8")
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        if len(client.app[keys.RESOLVER].networks) == 1:
            break
        await asyncio.sleep(0.02)
    assert len(client.app[keys.RESOLVER].networks) == 1
    # a broken list keeps the one in use
    lists.write_text("AS64510 vpm Example VPN\n", "utf-8")
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        if any("not reloaded" in r.message for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert any("unknown category 'vpm'" in r.message for r in caplog.records)
    assert len(client.app[keys.RESOLVER].networks) == 1
    await post(client, login="bob", remote="203.0.113.7")
    await sink.wait_for(3)
    await post(client, login="bob", remote="192.0.2.9")
    third, fourth = (await sink.wait_for(4))[2:]
    assert (fourth["login"], fourth["reasons"]) == ("bob", ["new_country", "new_provider"])
    assert third["reasons"] == ["first_use"]


# -- replay ------------------------------------------------------------------------------------


async def test_replay_compares_configs(make_config: Callable[..., Config]) -> None:
    events = sorted(read_events([LOGS], TOKYO), key=lambda e: e.at)
    current = make_config()
    result = await replay(current, events)
    assert (result.logins, result.notices, result.accounts_notified) == (6, 4, 3)
    assert dict(result.by_reason) == {"first_use": 3, "new_country": 1, "new_provider": 1}
    assert dict(result.by_day) == {"2026-11-03": 2, "2026-11-04": 1, "2026-11-05": 1}
    learning = await replay(make_config(policy={"learning_days": 7}), events)
    assert (learning.notices, learning.silent) == (3, 1)
    quiet_first = await replay(
        make_config(policy={"notify": ["new_country", "new_provider"]}), events
    )
    assert (quiet_first.notices, quiet_first.silent) == (1, 3)
    # the live store is untouched
    assert not Path(current.storage.path).exists()


async def test_replay_the_owners_first_login_after_a_fetcher_or_an_unknown_is_first_use(
    make_config: Callable[..., Config],
) -> None:
    # carol's mail app polls her mailbox from its servers (a known mail-app network) before she
    # first logs in from home; dave's first login comes from an address no data places
    at = 1_764_000_000.0
    events = [
        Event("carol", "192.0.2.9", "imap", True, at),
        Event("carol", "192.0.2.9", "imap", True, at + 300),
        Event("carol", "203.0.113.7", "imap", True, at + 3600),
        Event("dave", "198.18.0.1", "imap", True, at),
        Event("dave", "203.0.113.8", "imap", True, at + 3600),
        # once placed, the owner's next new place is new as ever
        Event("dave", "198.51.100.7", "imap", True, at + 7200),
    ]
    config = make_config(networks={"entries": ["AS64520 mail-app Example Fetcher"]})
    result = await replay(config, events)
    # before, the owners' homes were "new_country" + "new_provider" against the fetcher's and
    # the unplaceable origin, which were taken as where the owners are
    assert dict(result.by_reason) == {"first_use": 4, "new_country": 1, "new_provider": 1}
    assert result.notices == 5


async def test_replay_report_side_by_side_and_json(make_config: Callable[..., Config]) -> None:
    configs = {"current": make_config(), "candidate": make_config(policy={"learning_days": 7})}
    code, text = await output(replay_configs, configs, [LOGS], TOKYO, False)
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == "6 logins from 9 lines"
    assert lines[1].split() == ["current", "candidate"]
    assert "notices" in text and lines[4].split() == ["notices", "4", "3"]
    assert any(line.split() == ["2026-11-05", "1", "0"] for line in lines)
    code, text = await output(replay_configs, configs, [LOGS], TOKYO, True)
    document = json.loads(text)
    assert document["current"]["by_reason"]["first_use"] == 3
    assert document["candidate"]["silent"] == 1


# -- the commands ------------------------------------------------------------------------------


def write_config(path: Path, geo: dict[str, Path], store: Path, extra: str = "") -> Path:
    path.write_text(
        f'[geoip]\ncountry_db = "{geo["country_mmdb"]}"\nasn_db = "{geo["asn_mmdb"]}"\n'
        f'bundled = false\n[storage]\npath = "{store}"\n{extra}',
        encoding="utf-8",
    )
    return path


def test_commands_import_show_export_forget(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from policy_server.commands.main import main

    conf = write_config(tmp_path / "c.toml", geo_files, tmp_path / "s.sqlite3")
    zone = ["--log-timezone", "Asia/Tokyo"]
    assert main(["import-log", str(LOGS), *zone, "-c", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "recorded 6 logins of 3 accounts from 1 file(s) (9 lines, 3 without a login)" in out
    assert main(["history", "show", "Alice@Example.JP", "-c", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "origins (2):" in out and "192.0.2.0/24         DE  AS64520" in out
    assert main(["history", "export", "alice@example.jp", "-c", str(conf)]) == 0
    assert len(json.loads(capsys.readouterr().out)["origins"]) == 2
    assert main(["history", "forget", "alice@example.jp", "-c", str(conf)]) == 0
    assert main(["history", "show", "alice@example.jp", "-c", str(conf)]) == 1
    assert main(["import-log", str(tmp_path / "absent.log"), "-c", str(conf)]) == 1
    assert "absent.log" in capsys.readouterr().err


def test_command_replay(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from policy_server.commands.main import main

    current = write_config(tmp_path / "current.toml", geo_files, tmp_path / "live.sqlite3")
    candidate = write_config(
        tmp_path / "candidate.toml",
        geo_files,
        tmp_path / "live.sqlite3",
        '[policy]\nnotify = ["new_country", "new_provider"]\n',
    )
    args = ["replay", "--config", str(candidate), "-c", str(current), str(LOGS)]
    assert main([*args, "--json", "--log-timezone", "Asia/Tokyo"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["current"]["notices"], document["candidate"]["notices"]) == (4, 1)
    assert not (tmp_path / "live.sqlite3").exists()  # the live store was never opened
    assert main(args) == 0
    assert "first_use" in capsys.readouterr().out


def test_check_config_reports_bad_network_lists(tmp_path: Path, geo_files: dict[str, Path]) -> None:
    from policy_server.commands.main import main

    lists = tmp_path / "n.txt"
    lists.write_text("10.0.0.0/8 trustd\n", encoding="utf-8")
    conf = write_config(
        tmp_path / "c.toml", geo_files, tmp_path / "s.sqlite3", f'[networks]\nfiles = ["{lists}"]\n'
    )
    assert main(["check-config", "-c", str(conf)]) == 1


async def test_replay_never_uses_the_live_postgres_store(
    make_config: Callable[..., Config],
) -> None:
    # a live store nobody can reach: the replay must not even try it
    live = make_config(
        storage={"backend": "postgres", "dsn": "postgresql://nobody@127.0.0.1:1/none"}
    )
    events = sorted(read_events([LOGS], TOKYO), key=lambda e: e.at)
    result = await replay(live, events)
    assert result.notices == 4


async def test_replay_a_dual_stack_login_makes_one_notice(
    make_config: Callable[..., Config],
) -> None:
    # the IMAP client connects over IPv6, its SMTP submission a few seconds later over the
    # IPv4 egress, which the carrier routes through another of its ASNs
    at = 1_764_000_000.0
    thunderbird = '"name" "Thunderbird" "version" "128.3"'
    events = [
        Event("erin", "2001:db8:1::5", "imap", True, at, thunderbird),
        Event("erin", "203.0.113.200", "submission", True, at + 20, thunderbird),
        # the same later, after the coalescing window: a notice of its own
        Event("frank", "2001:db8:1::6", "imap", True, at, thunderbird),
        Event("frank", "203.0.113.201", "imap", True, at + 3600, thunderbird),
        # and another country within the window is never taken in
        Event("gina", "2001:db8:1::7", "imap", True, at, thunderbird),
        Event("gina", "2001:db8:2::7", "imap", True, at + 3600 * 30, thunderbird),
        Event("gina", "198.51.100.7", "imap", True, at + 3600 * 30 + 20, thunderbird),
    ]
    result = await replay(make_config(), events)
    # before, erin's two logins made two notices (first_use, then new_provider)
    assert (result.notices, result.joined) == (6, 1)
    assert dict(result.by_reason) == {
        "first_use": 3,
        "new_country": 2,
        "new_provider": 3,
    }


async def test_a_phone_wandering_a_carriers_pools_keeps_a_few_rows(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    from geodata import Network, write_asn_mmdb, write_country_mmdb

    from policy_server.model import Command, LoginEvent
    from policy_server.origin.resolver import OriginResolver
    from policy_server.service.recorder import LoginRecorder

    mobile = [Network("10.0.0.0/8", "JP", 64999, "Example Mobile JP")]
    config = make_config(
        geoip={
            "country_db": str(write_country_mmdb(tmp_path / "c.mmdb", mobile)),
            "asn_db": str(write_asn_mmdb(tmp_path / "a.mmdb", mobile)),
        }
    )
    assert config.storage.origins_per_provider == 4
    resolver = OriginResolver.from_config(config.geoip)
    store = await open_store(config.storage)
    at = 1_764_000_000.0
    notices = 0
    try:
        recorder = LoginRecorder(config, store, lambda: resolver, ("log",))
        # a month of a phone: a new address pool every few hours, 150 in all
        for pool in range(150):
            event = LoginEvent(Command.REPORT, "hana", f"10.0.{pool}.9", "imap", success=True)
            outcome = await recorder.report(event, at=at + pool * 5 * 3600)
            notices += outcome.notice_id is not None
        # back in one of the first pools: a known provider in the known country
        event = LoginEvent(Command.REPORT, "hana", "10.0.3.9", "imap", success=True)
        outcome = await recorder.report(event, at=at + 151 * 5 * 3600)
        assert outcome.decision.reasons == ()
    finally:
        await store.close()
        resolver.close()
    assert notices == 1  # the first use
    stored = rows(config, "SELECT prefix, first_seen, count FROM origins WHERE account = 'hana'")
    # before, every pool stayed a row: 150 rows read by every login
    assert len(stored) == 4
    # what the rows let go of lives on in the rows that took their place
    assert min(first for _, first, _ in stored) == at
    assert sum(count for _, _, count in stored) == 151
    assert "10.0.3.0/24" in {prefix for prefix, _, _ in stored}


async def test_replay_reports_the_new_reasons_and_what_if(
    make_config: Callable[..., Config], geo_files: dict[str, Path]
) -> None:
    at = 1_764_000_000.0
    events = [
        # Tokyo, then Paris twenty minutes later
        Event("ivy", "203.0.113.7", "imap", True, at),
        Event("ivy", "2001:db8:2::7", "imap", True, at + 1200),
        # five providers in four countries within the hour
        *(
            Event("jack", remote, "smtp", True, at + 60 * i)
            for i, remote in enumerate(
                ("203.0.113.7", "203.0.113.200", "198.51.100.7", "192.0.2.7", "2001:db8:2::9")
            )
        ),
    ]
    city = {"country_db": str(geo_files["city_mmdb"])}
    current = await replay(make_config(geoip=city), events)
    # ivy's journey, and jack's from country to country (Tokyo, Osaka, Ashburn, Frankfurt,
    # Paris a minute apart: Osaka is in the same country, too loosely placed to judge)
    assert current.found["impossible_travel"] == 4 and current.found["many_origins"] == 1
    assert current.by_reason["impossible_travel"] == 4 and current.alerts == 1
    # what if both checks were off
    candidate = await replay(
        make_config(geoip=city, policy={"max_speed_kmh": 0}, compromise={"providers": 0}),
        events,
    )
    assert candidate.found["impossible_travel"] == 0 and candidate.alerts == 0
    assert current.notices == candidate.notices  # the same logins notify, for fewer reasons
    text = format_side_by_side({"current": current, "candidate": candidate})
    assert any(line.split() == ["admin", "alerts", "1", "0"] for line in text.splitlines())
    assert any(line.split() == ["impossible_travel", "4", "0"] for line in text.splitlines())
