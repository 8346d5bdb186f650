"""Logging set-up and a rate limit for lines that can repeat once per request."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime


class RateLimitedLog:
    """Let one line per key through every ``interval`` seconds; count what was held back.

    A broken store or a misconfigured Dovecot produces the same error on every login; one line
    a minute with a count says as much as thousands.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (%d similar lines suppressed)"
            args = (*args, held)
        self._logger.log(level, msg, *args)


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    """Lines on stderr (plain or JSON), one logger per part under ``policy_server``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The access log would write a line per Dovecot request; off unless asked for.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement at debug level: far too much even for debugging.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
