"""``policy-server account LOGIN``: an account's own settings, shown and changed."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from policy_server.commands.main import main


def write_config(tmp_path: Path, geo: dict[str, Path]) -> str:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[geoip]\ncountry_db = "{geo["country_mmdb"]}"\nasn_db = "{geo["asn_mmdb"]}"\n'
        f'bundled = false\n[storage]\npath = "{tmp_path / "s.sqlite3"}"\n'
        '[accounts]\nexempt = ["svc-*"]\n',
        encoding="utf-8",
    )
    return str(path)


def shown(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["account", *args, "--json"]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_notices_off_and_on_and_a_trip(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path, geo_files)
    # nothing stored yet: a read-only look does not create the store
    assert main(["account", "Alice@Example.JP", "-c", conf]) == 1
    assert not (tmp_path / "s.sqlite3").exists()
    capsys.readouterr()
    data = shown(capsys, "Alice@Example.JP", "--notices", "off", "-c", conf)
    assert data == {
        "account": "alice@example.jp",
        "notices": False,
        "trip_country": None,
        "trip_until": None,
        "alerted_at": None,
        "exempt": False,
    }
    last = (date.today() + timedelta(days=3)).isoformat()
    data = shown(capsys, "alice@example.jp", "--travel", "fr", "--until", last, "-c", conf)
    zone = ZoneInfo("Asia/Tokyo")
    end = datetime.combine(date.fromisoformat(last) + timedelta(days=1), datetime.min.time(), zone)
    assert (data["notices"], data["trip_country"], data["trip_until"]) == (
        False,
        "FR",
        end.timestamp(),
    )
    assert main(["account", "alice@example.jp", "--notices", "on", "-c", conf]) == 0
    out = capsys.readouterr().out
    assert "notices: on" in out and f"trip: FR until {last} (Asia/Tokyo)" in out
    assert main(["history", "show", "alice@example.jp", "-c", conf]) == 0
    assert f"trip: FR until {last}" in capsys.readouterr().out
    assert main(["history", "export", "alice@example.jp", "-c", conf]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["trip_country"] == "FR"
    data = shown(capsys, "alice@example.jp", "--no-travel", "-c", conf)
    assert (data["notices"], data["trip_country"]) == (True, None)
    assert shown(capsys, "svc-backup", "-c", conf)["exempt"] is True
    assert main(["history", "forget", "alice@example.jp", "-c", conf]) == 0
    assert "1 account_settings" in capsys.readouterr().out
    assert shown(capsys, "alice@example.jp", "-c", conf)["notices"] is True


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--travel", "France", "--until", "2999-01-01"], "not a two-letter country code"),
        (["--travel", "FR", "--until", "2000-01-01"], "is in the past"),
        (["--travel", "FR", "--until", "next week"], "is not a date"),
        (["--travel", "FR"], "go together"),
        (["--travel", "FR", "--until", "2999-01-01", "--no-travel"], "exclude each other"),
    ],
)
def test_bad_options_are_refused_and_write_nothing(
    tmp_path: Path,
    geo_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    error: str,
) -> None:
    conf = write_config(tmp_path, geo_files)
    assert main(["account", "alice", *args, "-c", conf]) == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite3").exists()
