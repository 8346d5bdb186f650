"""Counters of what the service did, kept in the process for logs, tests and metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import Metrics


COMMANDS = ("allow", "report")


def command_label(command: str) -> str:
    """The ``command`` label of a request: one of three values, whatever was sent."""
    return command if command in COMMANDS else "other"


@dataclass
class Stats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    fail_open: int = 0
    notices_queued: int = 0
    metrics: Metrics | None = None
    # the labelled children met so far (``labels`` takes a lock and builds a key each time):
    # a few per process, as every label here has a handful of values
    _counters: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _latencies: dict[str, Any] = field(default_factory=dict, repr=False)

    def count(self, command: str, outcome: str) -> None:
        """Count one answer; ``command`` is what the caller sent, named ``allow``, ``report``
        or ``other`` (anyone who reaches the port chooses it: it must not make new series)."""
        key = (command_label(command), outcome)
        self.requests[key] += 1
        if self.metrics is not None:
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.metrics.requests.labels(*key)
            counter.inc()
            if outcome == "notice":
                self.metrics.notices.inc()

    def answered_in(self, command: str, seconds: float) -> None:
        """An answer's time, into the latency histogram of its ``command`` label."""
        if self.metrics is None:
            return
        label = command_label(command)
        histogram = self._latencies.get(label)
        if histogram is None:
            histogram = self._latencies[label] = self.metrics.latency.labels(label)
        histogram.observe(seconds)

    def failed_open(self, reason: str) -> None:
        """Count a report answered status 0 unrecorded: ``budget``, ``overloaded``, ``error``."""
        self.fail_open += 1
        self.count("report", "fail_open")
        if self.metrics is not None:
            self.metrics.fail_open.labels(reason).inc()

    def decided(self, reasons: Iterable[str]) -> None:
        if self.metrics is not None:
            for reason in reasons:
                self.metrics.decisions.labels(reason).inc()
