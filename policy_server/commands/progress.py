"""Progress of a long read (``import-log``, ``replay``): lines, rate and time left, on one line
of stderr that rewrites itself, only when stderr is a terminal (scripts and logs see nothing)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..events import ReadStats


class Progress:
    """Call it with the read's stats as it goes (``ReadStats.progress``); ``done`` at the end."""

    def __init__(self, what: str, stream: TextIO | None = None, interval_s: float = 0.5) -> None:
        self._what = what
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self._interval = interval_s
        self._started = time.monotonic()
        self._last = 0.0
        self._width = 0

    def __call__(self, stats: ReadStats) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        self._show(self.line_for(self._what, stats, now - self._started))

    @staticmethod
    def line_for(what: str, stats: ReadStats, elapsed: float) -> str:
        rate = stats.lines / elapsed if elapsed > 0 else 0.0
        text = f"{what}: {stats.lines:,} lines, {rate:,.0f} lines/s"
        if stats.bytes_total > 0 and stats.bytes_read > 0:
            share = min(stats.bytes_read / stats.bytes_total, 1.0)
            left = elapsed * (1 - share) / share
            text += f", {share:.0%}, about {_duration(left)} left"
        return text

    def _show(self, text: str) -> None:
        padding = " " * max(0, self._width - len(text))
        self._stream.write(f"\r{text}{padding}")
        self._stream.flush()
        self._width = len(text)

    def done(self) -> None:
        """Clear the line (the command's summary follows)."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
