"""Past logins as events: read from Dovecot's own log lines or from the service's JSON-lines
export, and written to that export when ``[privacy] events_path`` is set."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any

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

    def to_json(self) -> str:
        return json.dumps(
            {
                "time": datetime.fromtimestamp(self.at, UTC).isoformat(),
                "login": self.login,
                "remote": self.remote,
                "protocol": self.protocol,
                "success": self.success,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


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
        )
    except KeyError as exc:
        raise ValueError(f"missing {exc.args[0]!r}") from None


def open_text(path: Path) -> IO[str]:
    """A log file as text, gzip or not (by its first bytes, whatever its name)."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


@dataclass
class ReadStats:
    lines: int = 0
    events: int = 0
    bad_json: int = 0


def read_events(
    paths: Iterable[Path], zone: tzinfo, stats: ReadStats | None = None
) -> Iterator[Event]:
    """Events from Dovecot logs and JSON-lines exports, in file order.

    A line that starts with ``{`` is read as an export line; any other line is a Dovecot log
    line, and lines that record no successful login are skipped.
    """
    stats = stats if stats is not None else ReadStats()
    now = datetime.now(zone)
    for path in paths:
        with open_text(path) as handle:
            for line in handle:
                stats.lines += 1
                text = line.strip()
                if text.startswith("{"):
                    try:
                        event: Event | None = parse_json_line(text)
                    except ValueError:
                        stats.bad_json += 1
                        continue
                else:
                    event = parse_dovecot_line(text, zone, now)
                if event is not None:
                    stats.events += 1
                    yield event


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
    """Appends one JSON line per report to ``[privacy] events_path``; never raises."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._handle: IO[str] | None = None
        self._failed = False

    def write(self, event: Event) -> None:
        try:
            if self._handle is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self._path.open("a", encoding="utf-8")
            self._handle.write(event.to_json() + "\n")
            self._handle.flush()
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot append to events file %s: %s", self._path, exc)
            self._failed = True
            self.close()

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
