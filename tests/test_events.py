"""Past logins from Dovecot's log lines and from the JSON-lines export."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from policy_server.events import (
    Event,
    EventWriter,
    ReadStats,
    batches,
    parse_dovecot_line,
    parse_json_line,
    read_events,
)

DATA = Path(__file__).parent / "data" / "dovecot-logins.log"
TOKYO = ZoneInfo("Asia/Tokyo")
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=TOKYO)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=TOKYO).timestamp()


def test_every_login_format_and_nothing_else() -> None:
    stats = ReadStats()
    events = list(read_events([DATA], TOKYO, stats))
    assert [(e.login, e.remote, e.protocol) for e in events] == [
        ("alice@example.jp", "203.0.113.7", "imap"),
        ("alice@example.jp", "203.0.113.7", "submission"),
        ("bob", "198.51.100.9", "pop3"),
        ("carol@example.jp", "2001:db8:1::5", "imap"),
        ("alice@example.jp", "192.0.2.5", "imap"),
        ("bob", "198.51.100.10", "sieve"),
    ]
    assert all(e.success for e in events)
    assert (stats.lines, stats.events) == (9, 6)
    # syslog time in the given zone, this year; ISO with its own offset; ISO without one
    assert events[0].at == ts(2026, 11, 3, 8, 1, 12)
    assert events[4].at == pytest.approx(ts(2026, 11, 5, 7, 30, 0) + 0.123456)
    assert events[5].at == ts(2026, 11, 5, 8, 0, 0)


def test_syslog_dates_never_land_in_the_future() -> None:
    line = "Dec 30 23:59:59 mail dovecot: imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.1"
    event = parse_dovecot_line(line, TOKYO, NOW)
    assert event is not None
    assert event.at == ts(2025, 12, 30, 23, 59, 59)


def test_syslog_leap_day_is_the_last_one_and_no_such_day_is_no_login() -> None:
    login = " mail dovecot: imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.1"
    event = parse_dovecot_line("Feb 29 06:00:00" + login, TOKYO, NOW)
    assert event is not None
    assert event.at == ts(2024, 2, 29, 6, 0, 0)
    assert parse_dovecot_line("Feb 30 06:00:00" + login, TOKYO, NOW) is None


def test_failed_logins_and_other_lines_are_not_logins() -> None:
    lines = DATA.read_text(encoding="utf-8").splitlines()
    assert parse_dovecot_line(lines[1], TOKYO, NOW) is None  # logged out
    assert parse_dovecot_line(lines[4], TOKYO, NOW) is None  # auth failed
    assert parse_dovecot_line("imap-login: Login: user=<a>, rip=192.0.2.1", TOKYO, NOW) is None


def test_gzip_by_content(tmp_path: Path) -> None:
    packed = tmp_path / "dovecot.log.1"  # rotated files need not end in .gz
    with DATA.open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert list(read_events([packed], TOKYO)) == list(read_events([DATA], TOKYO))


def test_export_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    writer = EventWriter(str(path))
    first = Event("Taro@example.jp", "2001:db8::1", "imap", True, 1_700_000_000.5)
    second = Event("bob", "192.0.2.1", "pop3", False, 1_700_000_100.0)
    writer.write(first)
    writer.write(second)
    writer.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "time": datetime.fromtimestamp(first.at, UTC).isoformat(),
        "login": "Taro@example.jp",
        "remote": "2001:db8::1",
        "protocol": "imap",
        "success": True,
    }
    assert list(read_events([path], TOKYO)) == [first, second]
    with pytest.raises(ValueError, match="missing 'remote'"):
        parse_json_line('{"time": "2026-01-01T00:00:00+00:00", "login": "a"}')


def test_an_unwritable_export_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    writer = EventWriter(str(blocker / "events.jsonl"))  # a file where a directory should be
    for _ in range(3):
        writer.write(Event("a", "192.0.2.1", "imap", True, 0.0))
        assert writer.flush()
    assert sum("cannot append to events file" in r.message for r in caplog.records) == 1


def test_batches_keep_each_login_once_and_the_order() -> None:
    events = [Event(name, "192.0.2.1", "imap", True, float(i)) for i, name in enumerate("abAcb")]
    cut = list(batches(events, size=3))
    assert [[e.login for e in b] for b in cut] == [["a", "b"], ["A", "c", "b"]]
    assert [e for b in cut for e in b] == events


def test_dovecot24_logged_in_lines() -> None:
    # Dovecot 2.4.1's own log file (Debian 13), as the end-to-end suite sees it
    line = (
        "Dec 02 09:46:23 pop3-login: Info: Logged in: user=<user8>, method=PLAIN, "
        "rip=2001:db8::8, lip=127.0.0.1, mpid=14190, secured, session=<lyYNhKNhypx/AAAB>"
    )
    event = parse_dovecot_line(line, TOKYO, NOW)
    assert event is not None
    assert (event.login, event.remote, event.protocol) == ("user8", "2001:db8::8", "pop3")
    aborted = (
        "Dec 02 09:46:23 imap-login: Info: Login aborted: Connection closed (auth_process_not_"
        "ready): user=<>, rip=127.0.0.1, lip=127.0.0.1, secured, session=<cWcMhKNhepl/AAAB>"
    )
    assert parse_dovecot_line(aborted, TOKYO, NOW) is None
