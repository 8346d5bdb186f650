"""Long logs are streamed, not loaded: files merged in time order as they are read, progress on
a terminal, and the events export written by a thread of its own (never on the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

from policy_server.commands.import_log import import_log, import_logs
from policy_server.commands.progress import Progress
from policy_server.commands.replay import replay_configs
from policy_server.config import Config
from policy_server.events import Event, EventWriter, ReadStats, merged_events

UTCZONE = UTC


def line(at: float, user: str, rip: str = "203.0.113.7") -> str:
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return (
        f"{stamp} mail dovecot: imap-login: Login: user=<{user}>, method=PLAIN, rip={rip},"
        " lip=192.0.2.1, mpid=1, TLS, session=<abc>\n"
    )


def test_files_are_merged_in_time_order_as_they_are_read(tmp_path: Path) -> None:
    first, second = tmp_path / "mail.log.1", tmp_path / "mail.log"
    first.write_text("".join(line(1000.0 + 2 * i, f"a{i}") for i in range(500)))
    second.write_text("".join(line(1001.0 + 2 * i, f"b{i}") for i in range(500)))
    stats = ReadStats()
    events = merged_events([second, first], UTCZONE, stats)
    head = next(events)
    # one event out, and the files read no further than their first buffers
    assert head == Event("a0", "203.0.113.7", "imap", True, 1000.0)
    assert stats.lines < 1000
    rest = list(events)
    assert [e.at for e in [head, *rest]] == [1000.0 + i for i in range(1000)]
    assert (stats.lines, stats.events, stats.out_of_order) == (1000, 1000, 0)
    assert stats.bytes_read == stats.bytes_total == first.stat().st_size + second.stat().st_size


def test_a_clock_step_inside_a_file_is_kept_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(line(1000.0, "a") + line(2000.0, "b") + line(1500.0, "c") + line(3000.0, "d"))
    stats = ReadStats()
    assert [e.login for e in merged_events([log], UTCZONE, stats)] == ["a", "b", "c", "d"]
    assert stats.out_of_order == 1


async def test_import_log_records_while_the_log_is_still_being_read(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    """A log that is never whole in memory: a pipe whose writer waits until the first logins
    are in the store before it writes the rest. Sorting the whole file first would wait for
    the end of the pipe for ever."""
    config = make_config()
    pipe = tmp_path / "mail.log"
    os.mkfifo(pipe)
    first_part = 1500  # more than a batch: the first batches commit while the pipe stays open
    recorded_early = threading.Event()

    def writer() -> None:
        with pipe.open("w") as out:
            out.write("".join(line(1000.0 + i, f"user{i}") for i in range(first_part)))
            out.flush()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not recorded_early.is_set():
                with contextlib.suppress(sqlite3.Error):
                    conn = sqlite3.connect(config.storage.path)
                    try:
                        ((count,),) = conn.execute("SELECT count(*) FROM accounts").fetchall()
                    finally:
                        conn.close()
                    if count > 0:
                        recorded_early.set()
                        break
                time.sleep(0.02)  # this thread polls the store; nothing waits on it
            out.write("".join(line(9000.0 + i, f"late{i}") for i in range(100)))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    stats = await asyncio.wait_for(import_logs(config, [pipe], UTCZONE), 60)
    thread.join(10)
    assert recorded_early.is_set()
    assert stats.recorded == first_part + 100


def test_progress_shows_lines_rate_and_time_left_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as terminal:
            progress = Progress("import-log", stream=terminal, interval_s=0.0)
            assert progress.enabled
            stats = ReadStats(lines=200_000, bytes_read=25, bytes_total=100)
            progress(stats)
            progress.done()
        shown = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "import-log: 200,000 lines" in shown and "lines/s" in shown
    assert "25%" in shown and "left" in shown
    not_a_terminal = io.StringIO()
    quiet = Progress("import-log", stream=not_a_terminal, interval_s=0.0)
    quiet(ReadStats(lines=1))
    quiet.done()
    assert not quiet.enabled and not_a_terminal.getvalue() == ""


def test_import_log_prints_no_progress_when_not_on_a_terminal(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    conf = tmp_path / "policy.toml"
    conf.write_text(
        f'[storage]\npath = "{config.storage.path}"\n[geoip]\n'
        f'country_db = "{config.geoip.country_db}"\nasn_db = "{config.geoip.asn_db}"\n'
        "bundled = false\n",
        encoding="utf-8",
    )
    log = tmp_path / "mail.log"
    log.write_text("".join(line(1000.0 + i, f"u{i % 50}") for i in range(40_000)))
    done = subprocess.run(
        [sys.executable, "-m", "policy_server", "import-log", str(log), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "lines/s" not in done.stderr
    assert "recorded 40000 logins of 50 accounts" in done.stdout


# -- the events export -----------------------------------------------------------------------


@contextlib.contextmanager
def reader_of(pipe: Path) -> Iterator[list[str]]:
    """Open the pipe for reading in a thread (opening it blocks until a writer opens it) and
    collect its lines until the writer closes it."""
    lines: list[str] = []

    def read() -> None:
        with pipe.open(encoding="utf-8") as source:
            lines.extend(source.read().splitlines())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        thread.join(10)


def test_the_export_never_writes_on_the_callers_thread_and_drops_when_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a pipe nobody reads yet: opening it for writing blocks, as a stalled disk would
    pipe = tmp_path / "events.jsonl"
    os.mkfifo(pipe)
    writer = EventWriter(str(pipe), limit=5)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="policy_server.events"):
        for i in range(20):
            writer.write(Event(f"user{i}", "192.0.2.1", "imap", True, 1000.0 + i))
        # the caller (the event loop) was never held up by the file
        assert time.monotonic() - started < 1.0
        # 5 lines fit (the ones the blocked thread holds count until they are written)
        assert writer.dropped == 15
        # one log line for the first drop, none for the next ones within the minute
        assert [r.getMessage() for r in caplog.records] == [
            f"events file {pipe} is not keeping up: 1 events dropped so far"
        ]
        with reader_of(pipe) as lines:
            assert writer.close()
        # close says how many were dropped in all
        assert caplog.records[-1].getMessage().endswith(": 15 events dropped so far")
    assert [json.loads(text)["login"] for text in lines] == [f"user{i}" for i in range(5)]


def test_the_export_is_written_by_another_thread(tmp_path: Path) -> None:
    """Each line goes to the file from the writer's thread, never the caller's."""
    path = tmp_path / "events.jsonl"
    writing: set[int] = set()
    original = EventWriter._append

    def spy(self: EventWriter, handle: IO[str] | None, lines: list[str]) -> IO[str] | None:
        writing.add(threading.get_ident())
        return original(self, handle, lines)

    writer = EventWriter(str(path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EventWriter, "_append", spy)
        for i in range(100):
            writer.write(Event(f"user{i}", "192.0.2.1", "imap", True, 1000.0 + i))
        assert writer.close()
    assert writing and threading.get_ident() not in writing
    assert len(path.read_text(encoding="utf-8").splitlines()) == 100


def test_close_writes_everything_queued_and_the_next_write_reopens(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter(str(path))
    for i in range(1000):
        writer.write(Event(f"user{i}", "192.0.2.1", "imap", True, 1000.0 + i))
    assert writer.close()
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1000
    path.rename(tmp_path / "events.jsonl.1")
    writer.write(Event("after", "192.0.2.1", "imap", True, 5000.0))
    assert writer.close()
    assert [json.loads(t)["login"] for t in path.read_text().splitlines()] == ["after"]
    assert writer.dropped == 0


# -- import-log and replay end to end ----------------------------------------------------------


def store_rows(config: Config, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(config.storage.path)) as conn:
        return conn.execute(sql).fetchall()


async def test_import_log_merges_interleaved_files_gzip_too(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    rotated, current = tmp_path / "mail.log.1.gz", tmp_path / "mail.log"
    day = 86400.0  # more than [policy] touch_granularity_s between two logins
    # the rotated file is gzip: times interleave with the current one
    with gzip.open(rotated, "wt", encoding="utf-8") as packed:
        packed.write(line(1 * day, "alice", "203.0.113.7") + line(3 * day, "alice", "203.0.113.8"))
    current.write_text(line(2 * day, "alice", "192.0.2.7") + line(4 * day, "alice", "192.0.2.8"))
    out = io.StringIO()
    assert await import_log(config, [current, rotated], UTCZONE, out=out) == 0
    assert out.getvalue() == (
        "recorded 4 logins of 1 accounts from 2 file(s) (4 lines, 0 without a login)\n"
    )
    assert store_rows(config, "SELECT first_seen, last_seen FROM accounts") == [(day, 4 * day)]
    assert store_rows(
        config, "SELECT prefix, first_seen, last_seen, count FROM origins ORDER BY first_seen"
    ) == [("203.0.113.0/24", day, 3 * day, 2), ("192.0.2.0/24", 2 * day, 4 * day, 2)]


async def test_import_log_says_how_many_logins_went_back_in_time(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    log = tmp_path / "mail.log"
    log.write_text(line(1000.0, "a") + line(2000.0, "b") + line(1500.0, "c") + line(3000.0, "d"))
    out = io.StringIO()
    assert await import_log(config, [log], UTCZONE, out=out) == 0
    assert out.getvalue().splitlines() == [
        "recorded 4 logins of 4 accounts from 1 file(s) (4 lines, 0 without a login)",
        "1 logins earlier than a line before them in the same file (a clock step?):"
        " recorded where they stand",
    ]


async def test_replay_reads_the_logs_once_for_both_configs_as_it_goes(
    tmp_path: Path, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe can be read only once, and its writer waits until the first logins are in the
    throw-away stores before it writes the rest: both configs are fed from one read, while it
    reads."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the throw-away stores go
    configs = {"current": make_config(), "candidate": make_config(policy={"learning_days": 7})}
    pipe = tmp_path / "mail.log"
    os.mkfifo(pipe)
    first_part = 1500
    seen_early = threading.Event()

    def replayed() -> int:
        total = 0
        for store in scratch.glob("policy-server-replay-*/replay.sqlite3"):
            with contextlib.suppress(sqlite3.Error):
                with contextlib.closing(sqlite3.connect(store)) as conn:
                    ((count,),) = conn.execute("SELECT count(*) FROM accounts").fetchall()
                total += min(count, 1)
        return total

    def writer() -> None:
        with pipe.open("w") as out:
            out.write("".join(line(1000.0 + i, f"user{i}") for i in range(first_part)))
            out.flush()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if replayed() == 2:  # both stores have logins already
                    seen_early.set()
                    break
                time.sleep(0.02)  # this thread polls the stores; nothing waits on it
            out.write("".join(line(9000.0 + i, f"late{i}") for i in range(100)))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    out = io.StringIO()
    code = await asyncio.wait_for(replay_configs(configs, [pipe], UTCZONE, True, out=out), 60)
    thread.join(10)
    assert code == 0 and seen_early.is_set()
    document = json.loads(out.getvalue())
    assert document["events"] == document["lines"] == first_part + 100
    assert document["current"]["logins"] == document["candidate"]["logins"] == first_part + 100
