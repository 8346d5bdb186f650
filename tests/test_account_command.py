"""``policy-server account LOGIN``: an account's own settings, shown and changed, on SQLite and
PostgreSQL; and how ``history show`` lists them with each origin's mail programs."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from stores import DSN, REQUIRE_POSTGRES, Backend, drop_schema, postgres_problem
from test_store_contract import US, login, origin, record

from policy_server.accounts import country_code
from policy_server.client import Client
from policy_server.commands.account import describe
from policy_server.commands.history import history_show
from policy_server.commands.main import main
from policy_server.config import Config
from policy_server.model import AccountSettings
from policy_server.store.base import Store

TOKYO = ZoneInfo("Asia/Tokyo")  # the default [message] timezone


@dataclass
class Setup:
    """A config file for one backend, and how to tell whether its store exists."""

    backend: str
    path: str
    sqlite: Path


def write_config(tmp_path: Path, geo: dict[str, Path], storage: str, extra: str = "") -> str:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[geoip]\ncountry_db = "{geo["country_mmdb"]}"\nasn_db = "{geo["asn_mmdb"]}"\n'
        f"bundled = false\n[storage]\n{storage}"
        f'[accounts]\nexempt = ["svc-*"]\n{extra}',
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture(params=["sqlite", "postgres"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, geo_files: dict[str, Path]
) -> Iterator[Setup]:
    sqlite = tmp_path / "s.sqlite3"
    if request.param == "sqlite":
        yield Setup("sqlite", write_config(tmp_path, geo_files, f'path = "{sqlite}"\n'), sqlite)
        return
    problem = asyncio.run(postgres_problem())
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{problem} (POLICY_SERVER_REQUIRE_POSTGRES=1)")
        pytest.skip(problem)
    schema = f"t_{secrets.token_hex(8)}"
    storage = f'backend = "postgres"\ndsn = "{DSN}"\nschema = "{schema}"\n'
    try:
        yield Setup("postgres", write_config(tmp_path, geo_files, storage), sqlite)
    finally:
        asyncio.run(drop_schema(schema))


def shown(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["account", *args, "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def day_end(day: str, zone: ZoneInfo = TOKYO) -> float:
    start = datetime.combine(date.fromisoformat(day) + timedelta(days=1), datetime.min.time())
    return start.replace(tzinfo=zone).timestamp()


def test_notices_off_and_on_and_a_trip(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    conf = setup.path
    # nothing stored yet: a read-only look does not create the store
    assert main(["account", "Alice@Example.JP", "-c", conf]) == 1
    assert "run `policy-server migrate`" in capsys.readouterr().err
    assert not setup.sqlite.exists()
    data = shown(capsys, "Alice@Example.JP", "--notices", "off", "-c", conf)
    assert data == {
        "account": "alice@example.jp",
        "notices": False,
        "trip_country": None,
        "trip_until": None,
        "trip_last_day": None,
        "alerted_at": None,
        "exempt": False,
    }
    last = (datetime.now(TOKYO).date() + timedelta(days=3)).isoformat()
    data = shown(capsys, "alice@example.jp", "--travel", "fr", "--until", last, "-c", conf)
    # notices stay off; the trip holds through its last day in [message] timezone
    assert (data["notices"], data["trip_country"], data["trip_until"]) == (
        False,
        "FR",
        day_end(last),
    )
    assert data["trip_last_day"] == last
    assert main(["account", "alice@example.jp", "--notices", "on", "-c", conf]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "account alice@example.jp:",
        "  notices: on",
        f"  trip: FR until {last} (Asia/Tokyo)",
    ]
    # with no option it only shows, and says so in text
    assert main(["account", "ALICE@example.jp", "-c", conf]) == 0
    assert capsys.readouterr().out == out
    assert main(["history", "show", "alice@example.jp", "-c", conf]) == 0
    history = capsys.readouterr().out.splitlines()
    assert "notices: on" in history and f"trip: FR until {last} (Asia/Tokyo)" in history
    assert main(["history", "export", "alice@example.jp", "-c", conf]) == 0
    exported = json.loads(capsys.readouterr().out)["settings"]
    assert exported["trip_country"] == "FR" and exported["notices"] is True
    data = shown(capsys, "alice@example.jp", "--no-travel", "-c", conf)
    assert (data["notices"], data["trip_country"], data["trip_until"]) == (True, None, None)
    assert main(["history", "forget", "alice@example.jp", "-c", conf]) == 0
    assert "1 account_settings" in capsys.readouterr().out
    assert shown(capsys, "alice@example.jp", "-c", conf)["notices"] is True


def test_options_combine_in_one_call(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    conf = setup.path
    last = (datetime.now(TOKYO).date() + timedelta(days=10)).isoformat()
    data = shown(capsys, "bob", "--notices", "off", "--travel", " gb ", "--until", last, "-c", conf)
    assert (data["notices"], data["trip_country"], data["trip_until"]) == (
        False,
        "GB",
        day_end(last),
    )
    data = shown(capsys, "bob", "--notices", "on", "--no-travel", "-c", conf)
    assert (data["notices"], data["trip_country"], data["trip_until"]) == (True, None, None)
    # a trip declared again replaces the one before
    shown(capsys, "bob", "--travel", "FR", "--until", last, "-c", conf)
    data = shown(capsys, "bob", "--travel", "JP", "--until", last, "-c", conf)
    assert data["trip_country"] == "JP"


def test_the_exempt_patterns_are_shown(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    conf = setup.path
    assert shown(capsys, "SVC-Backup", "--notices", "on", "-c", conf)["exempt"] is True
    assert main(["account", "svc-backup", "-c", conf]) == 0
    assert "  exempt from notices ([accounts] exempt)" in capsys.readouterr().out.splitlines()
    assert shown(capsys, "alice", "-c", conf)["exempt"] is False
    assert main(["account", "alice", "-c", conf]) == 0
    assert "exempt" not in capsys.readouterr().out


BAD_OPTIONS = [
    (["--travel", "France", "--until", "2999-01-01"], "not an ISO 3166 two-letter country code"),
    (["--travel", "UK", "--until", "2999-01-01"], "the United Kingdom is GB"),
    (["--travel", "XX", "--until", "2999-01-01"], "not an ISO 3166 two-letter country code"),
    (["--travel", "EU", "--until", "2999-01-01"], "not an ISO 3166 two-letter country code"),
    (["--travel", "F1", "--until", "2999-01-01"], "not an ISO 3166 two-letter country code"),
    (["--travel", "FR", "--until", "2000-01-01"], "is in the past"),
    (["--travel", "FR", "--until", "next week"], "is not a date"),
    (["--travel", "FR", "--until", "2999-02-30"], "is not a date"),
    (["--travel", "FR"], "go together"),
    (["--until", "2999-01-01"], "go together"),
    (["--travel", "FR", "--until", "2999-01-01", "--no-travel"], "exclude each other"),
    (["--notices", "off", "--travel", "FR", "--until", "2000-01-01"], "is in the past"),
]


@pytest.mark.parametrize(("args", "error"), BAD_OPTIONS)
def test_bad_options_are_refused_and_write_nothing(
    tmp_path: Path,
    geo_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    error: str,
) -> None:
    conf = write_config(tmp_path, geo_files, f'path = "{tmp_path / "s.sqlite3"}"\n')
    assert main(["account", "alice", *args, "-c", conf]) == 2
    err = capsys.readouterr().err
    assert error in err and err.startswith("policy-server: ")
    # refused before the store is opened
    assert "store:" not in err
    assert not (tmp_path / "s.sqlite3").exists()


def test_bad_options_leave_the_stored_settings_alone(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = setup.path
    last = (datetime.now(TOKYO).date() + timedelta(days=5)).isoformat()
    before = shown(
        capsys, "alice", "--notices", "off", "--travel", "US", "--until", last, "-c", conf
    )
    for args, _ in BAD_OPTIONS:
        # --notices on beside a bad option is not half done
        assert main(["account", "alice", "--notices", "on", *args, "-c", conf]) == 2, args
        capsys.readouterr()
    assert shown(capsys, "alice", "-c", conf) == before


def test_the_trip_ends_with_its_last_day_in_the_message_timezone(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # UTC+14: its today is tomorrow for most of the world, its yesterday may be theirs today
    zone = ZoneInfo("Pacific/Kiritimati")
    conf = write_config(
        tmp_path,
        geo_files,
        f'path = "{tmp_path / "s.sqlite3"}"\n',
        '[message]\ntimezone = "Pacific/Kiritimati"\n',
    )
    today = datetime.now(zone).date()
    data = shown(capsys, "alice", "--travel", "FR", "--until", today.isoformat(), "-c", conf)
    assert data["trip_until"] == day_end(today.isoformat(), zone)
    assert data["trip_last_day"] == today.isoformat()
    assert 0 < float(str(data["trip_until"])) - time.time() <= 86400
    yesterday = (today - timedelta(days=1)).isoformat()
    assert main(["account", "alice", "--travel", "FR", "--until", yesterday, "-c", conf]) == 2
    assert "is in the past" in capsys.readouterr().err
    assert main(["account", "alice", "-c", conf]) == 0
    assert f"trip: FR until {today} (Pacific/Kiritimati)" in capsys.readouterr().out


def test_the_alert_time_and_an_ended_trip_are_shown(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sqlite3"
    conf = write_config(tmp_path, geo_files, f'path = "{path}"\n')
    last = (datetime.now(TOKYO).date() + timedelta(days=2)).isoformat()
    shown(capsys, "alice", "--travel", "FR", "--until", last, "-c", conf)
    # what the service writes itself: the hijack alert's time; and a trip that has ended
    alerted = datetime(2026, 5, 1, 9, 30, tzinfo=TOKYO).timestamp()
    over = (datetime.now(TOKYO).date() - timedelta(days=10)).isoformat()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE account_settings SET alerted_at = ?, trip_until = ? WHERE account = 'alice'",
            (alerted, day_end(over)),
        )
    db.close()
    assert main(["account", "alice", "-c", conf]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "account alice:",
        "  notices: on",
        f"  trip: FR until {over} (Asia/Tokyo) (over)",
        "  many_origins alert last sent: 2026-05-01T09:30:00+09:00",
    ]
    assert shown(capsys, "alice", "-c", conf)["alerted_at"] == alerted


def test_a_trip_ending_at_another_zones_midnight_shows_its_end(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sqlite3"
    conf = write_config(tmp_path, geo_files, f'path = "{path}"\n')
    shown(capsys, "alice", "--travel", "FR", "--until", "2999-01-01", "-c", conf)
    # declared on the owner's page by an owner in Berlin: the end of their 24 December
    berlin = day_end("2999-12-24", ZoneInfo("Europe/Berlin"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE account_settings SET trip_until = ?", (berlin,))
    db.close()
    assert main(["account", "alice", "-c", conf]) == 0
    assert "  trip: FR until 2999-12-25 08:00 (Asia/Tokyo)" in capsys.readouterr().out
    assert shown(capsys, "alice", "-c", conf)["trip_last_day"] == "2999-12-25"


def test_country_codes_are_iso_3166() -> None:
    for text, code in (("fr", "FR"), (" jp ", "JP"), ("Gb", "GB"), ("xk", "XK"), ("us", "US")):
        assert country_code(text) == code
    for text in ("UK", "XX", "ZZ", "EU", "UN", "F", "FRA", "F1", "", "日本"):
        assert country_code(text) is None, text


def test_describe_without_a_trip(make_config: Callable[..., Config]) -> None:
    config = make_config()
    assert describe("alice", AccountSettings(), config, time.time()) == [
        "notices: on",
        "trip: none",
    ]
    assert describe("alice", AccountSettings(notices=False), config, time.time())[0] == (
        "notices: off (logins are learned, not notified)"
    )


# -- history show ----------------------------------------------------------------------------


async def test_history_show_lists_the_settings_and_each_origins_programs(
    store: Store, backend: Backend, make_config: Callable[..., Config]
) -> None:
    thunderbird, iphone = Client("Thunderbird", "128.3"), Client("iPhone Mail", "21A329")
    await record(store, replace(login(), client=thunderbird))
    await record(store, replace(login(at=1060.0), client=iphone))
    # an origin whose logins named no program (POP3, SMTP)
    await record(store, login(o=origin(*US), at=2000.0, protocol="pop3"))
    until = day_end("2999-12-31")
    await store.save_settings(
        "alice", AccountSettings(notices=False, trip_country="DE", trip_until=until), 3000.0
    )
    config = make_config(storage=backend.config.model_dump())
    out = io.StringIO()
    assert await history_show(config, "alice", out) == 0
    lines = out.getvalue().splitlines()
    assert lines[1:3] == [
        "notices: off (logins are learned, not notified)",
        "trip: DE until 2999-12-31 (Asia/Tokyo)",
    ]
    (home,) = [line for line in lines if line.strip().startswith("203.0.113.0/24")]
    (abroad,) = [line for line in lines if line.strip().startswith("198.51.100.0/24")]
    assert home.endswith("2 logins  known; programs: Thunderbird, iPhone Mail")
    assert "programs" not in abroad and abroad.endswith("1 logins  known")
    # the rest is as before: the decisions, the newest first
    newest = lines[lines.index("recent decisions (2):") + 1].split()
    assert newest[2:4] == ["pop3", "198.51.100.0/24"] and "new_country" in newest[6]
