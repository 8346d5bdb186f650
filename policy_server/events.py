"""Past logins as events: read from Dovecot's own log lines or from the service's JSON-lines
export (streamed, files merged in time order), and written to that export when ``[privacy]
events_path`` is set (by a thread, off the event loop)."""

from __future__ import annotations

import contextlib
import gzip
import heapq
import io
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any, cast

log = logging.getLogger("policy_server.events")

# "imap-login: Login: user=<alice>, method=PLAIN, rip=203.0.113.7, lip=..., TLS, session=<..>"
# as Dovecot 2.3 writes it ("Logged in: user=<...>" in 2.4), with or without the "Info: " of its
# own log file.
_LOGIN = re.compile(
    r"\b(?P<service>imap|pop3|submission|managesieve)-login: (?:Info: )?(?:Login|Logged in): "
    r"user=<(?P<user>[^>]*)>, .*?\brip=(?P<rip>[0-9A-Fa-f:.]+)"
)
_ISO = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
)
_SYSLOG = re.compile(r"^(?P<ts>[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2})")
_PROTOCOLS = {"managesieve": "sieve"}


@dataclass(frozen=True, slots=True)
class Event:
    """One reported login: who, from where, by which service, whether it succeeded, when."""

    login: str
    remote: str
    protocol: str
    success: bool
    at: float
    # the mail program's IMAP ID as Dovecot passed it ("" when it sent none)
    device_id: str = ""

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "login": self.login,
            "remote": self.remote,
            "protocol": self.protocol,
            "success": self.success,
        }
        if self.device_id:
            data["device_id"] = self.device_id
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _timestamp(text: str, zone: tzinfo, now: datetime) -> float | None:
    if match := _ISO.match(text):
        raw = match.group("ts").replace(",", ".").replace(" ", "T", 1)
        if raw.endswith("Z"):
            raw = raw[:-1] + "+00:00"
        elif re.search(r"[+-]\d{4}$", raw):
            raw = raw[:-2] + ":" + raw[-2:]
        when = datetime.fromisoformat(raw)
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone)
        return when.timestamp()
    if match := _SYSLOG.match(text):
        return _syslog_timestamp(" ".join(match.group("ts").split()), zone, now)
    return None


def _syslog_timestamp(stamp: str, zone: tzinfo, now: datetime) -> float | None:
    # syslog leaves out the year: take the latest that does not put the line in the future.
    # The year is parsed with the rest (strptime's default, 1900, has no 29 February, and
    # Python 3.13 deprecates parsing a day of month without a year).
    for year in range(now.year, now.year - 8, -1):
        try:
            when = datetime.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S")
        except ValueError:
            continue  # 29 February in a common year, or no such day at all
        when = when.replace(tzinfo=zone)
        if when <= now + timedelta(days=1):
            return when.timestamp()
    return None


def parse_dovecot_line(line: str, zone: tzinfo, now: datetime) -> Event | None:
    """The successful login a Dovecot log line records, or None for any other line."""
    match = _LOGIN.search(line)
    if match is None:
        return None
    at = _timestamp(line, zone, now)
    if at is None:
        return None
    service = match.group("service")
    return Event(
        login=match.group("user"),
        remote=match.group("rip"),
        protocol=_PROTOCOLS.get(service, service),
        success=True,
        at=at,
    )


def parse_json_line(line: str) -> Event:
    """An event of the JSON-lines export; raises ValueError for anything else."""
    data: Any = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        when = datetime.fromisoformat(str(data["time"]))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return Event(
            login=str(data["login"]),
            remote=str(data["remote"]),
            protocol=str(data.get("protocol") or "unknown"),
            success=bool(data.get("success", True)),
            at=when.timestamp(),
            device_id=str(data.get("device_id") or ""),
        )
    except KeyError as exc:
        raise ValueError(f"missing {exc.args[0]!r}") from None


def _open(path: Path) -> tuple[IO[str], IO[bytes]]:
    """A log file as text, gzip or not (by its first bytes, whatever its name), and the file
    itself (whose position says how far reading got); close both."""
    raw = path.open("rb")
    try:
        # peeked, not read: a pipe cannot seek back
        gzipped = raw.peek(2)[:2] == b"\x1f\x8b"
        binary = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if gzipped else raw
        return io.TextIOWrapper(binary, encoding="utf-8", errors="replace"), raw
    except BaseException:
        raw.close()
        raise


@dataclass
class ReadStats:
    """What reading found, kept current while it reads (``progress`` is called now and then
    with it)."""

    lines: int = 0
    events: int = 0
    bad_json: int = 0
    #: events earlier than one before them in the same file (processed in file order)
    out_of_order: int = 0
    #: bytes of the files read so far, and of all the files
    bytes_read: int = 0
    bytes_total: int = 0
    progress: Callable[[ReadStats], None] | None = None


#: lines between two updates of ``ReadStats.bytes_read`` and calls of ``progress``
PROGRESS_EVERY = 16384


def _file_events(path: Path, zone: tzinfo, now: datetime, stats: ReadStats) -> Iterator[Event]:
    latest = float("-inf")
    text, raw = _open(path)
    # how far reading got, added to stats.bytes_read as it grows (a pipe cannot tell)
    counted = 0
    seekable = raw.seekable()

    def count_bytes() -> None:
        nonlocal counted
        if seekable:
            position = raw.tell()
            stats.bytes_read += position - counted
            counted = position

    with raw, text:
        for line in text:
            stats.lines += 1
            if stats.lines % PROGRESS_EVERY == 0:
                count_bytes()
                if stats.progress is not None:
                    stats.progress(stats)
            stripped = line.strip()
            if stripped.startswith("{"):
                try:
                    event: Event | None = parse_json_line(stripped)
                except ValueError:
                    stats.bad_json += 1
                    continue
            else:
                event = parse_dovecot_line(stripped, zone, now)
            if event is None:
                continue
            stats.events += 1
            if event.at < latest:
                stats.out_of_order += 1
            else:
                latest = event.at
            yield event
        count_bytes()


def read_events(
    paths: Iterable[Path], zone: tzinfo, stats: ReadStats | None = None
) -> Iterator[Event]:
    """Events from Dovecot logs and JSON-lines exports, one file after the other, as read.

    A line that starts with ``{`` is read as an export line; any other line is a Dovecot log
    line, and lines that record no successful login are skipped.
    """
    stats = stats if stats is not None else ReadStats()
    now = datetime.now(zone)
    for path in paths:
        yield from _file_events(path, zone, now, stats)


def merged_events(
    paths: Sequence[Path], zone: tzinfo, stats: ReadStats | None = None
) -> Iterator[Event]:
    """The events of every file in time order, streamed: each file is in time order (a log is
    written as it happens), so the files are merged as they are read and memory stays flat
    however long they are. An event earlier than one before it in its own file (a clock step)
    is taken where it stands and counted in ``stats.out_of_order``.
    """
    stats = stats if stats is not None else ReadStats()
    stats.bytes_total = sum(path.stat().st_size for path in paths)
    now = datetime.now(zone)
    streams = [_file_events(path, zone, now, stats) for path in paths]
    return heapq.merge(*streams, key=lambda event: event.at)


def batches(events: Iterable[Event], size: int = 512) -> Iterator[list[Event]]:
    """Events in order, cut into batches in which each login appears at most once.

    Within a batch the events can be processed concurrently (and share a commit) without
    changing what each sees of its own account's history.
    """
    batch: list[Event] = []
    seen: set[str] = set()
    for event in events:
        key = event.login.casefold()
        if key in seen or len(batch) >= size:
            yield batch
            batch, seen = [], set()
        batch.append(event)
        seen.add(key)
    if batch:
        yield batch


class EventWriter:
    """Appends one JSON line per report to ``[privacy] events_path``; never raises, never
    blocks the caller on the file.

    ``write`` puts the line in a bounded queue and returns; a thread of its own writes what is
    queued, in batches. A full queue (a disk that stopped) drops the line and counts it
    (``dropped``, logged at most once a minute). ``close`` writes what is queued and closes the
    file; the next ``write`` opens it again (SIGHUP after logrotate).
    """

    #: lines written to the file in one go, at most
    BATCH = 1024
    #: seconds between two log lines about dropped events, at least
    DROP_LOG_INTERVAL_S = 60.0

    def __init__(self, path: str, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("the queue of the events file needs room for one line at least")
        self._path = Path(path)
        self._limit = limit
        # unbounded as a queue.Queue (a close or flush marker must never wait for room); the
        # bound on lines is kept by ``write``, under the lock
        self._queue: queue.SimpleQueue[str | _Marker] = queue.SimpleQueue()
        self._queued = 0  # lines in the queue
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed = False
        self.dropped = 0
        self._dropped_logged = 0  # ``dropped`` when it was last logged
        self._dropped_logged_at = float("-inf")

    def write(self, event: Event) -> None:
        text = event.to_json()
        with self._lock:
            if self._queued >= self._limit:
                self.dropped += 1
                self._log_dropped(time.monotonic())
                return
            self._queued += 1
            self._queue.put(text)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events-writer", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued so far is written; False on timeout."""
        return self._mark(_Marker(close=False), timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Write every line queued so far and close the file (the next ``write`` opens it
        again); False if that took longer than ``timeout`` (it is still done, later)."""
        with self._lock:
            if self.dropped > self._dropped_logged:
                self._log_dropped(time.monotonic(), force=True)
        return self._mark(_Marker(close=True), timeout)

    def _log_dropped(self, now: float, force: bool = False) -> None:
        if not force and now - self._dropped_logged_at < self.DROP_LOG_INTERVAL_S:
            return
        self._dropped_logged_at = now
        self._dropped_logged = self.dropped
        log.error(
            "events file %s is not keeping up: %d events dropped so far", self._path, self.dropped
        )

    def _mark(self, marker: _Marker, timeout: float) -> bool:
        with self._lock:
            if self._thread is None:
                return True  # nothing queued, nothing open
            self._queue.put(marker)
        return marker.done.wait(timeout)

    def _run(self) -> None:
        handle: IO[str] | None = None
        try:
            while True:
                item = self._queue.get()
                lines: list[str] = []
                while isinstance(item, str):
                    lines.append(item)
                    if len(lines) >= self.BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if lines:
                    handle = self._append(handle, lines)
                    with self._lock:
                        self._queued -= len(lines)
                if not isinstance(item, _Marker):
                    continue
                if item.close and handle is not None:
                    with contextlib.suppress(OSError):
                        handle.close()
                    handle = None
                item.done.set()
                if item.close:
                    with self._lock:
                        # the thread ends with the file closed and nothing left to write; a
                        # later write starts another (``write`` queues under the same lock)
                        if self._queue.empty():
                            self._thread = None
                            return
        finally:
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()

    def _append(self, handle: IO[str] | None, lines: list[str]) -> IO[str] | None:
        try:
            if handle is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                # a lone surrogate in a login is written as its JSON escape, never an error
                handle = self._path.open("a", encoding="utf-8", errors="backslashreplace")
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            self._failed = False
            return handle
        except OSError as exc:
            if not self._failed:
                log.error("cannot append to events file %s: %s", self._path, exc)
            self._failed = True
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
            return None


@dataclass
class _Marker:
    """A point in the writer's queue: everything before it is written when ``done`` is set."""

    close: bool
    done: threading.Event = field(default_factory=threading.Event)
