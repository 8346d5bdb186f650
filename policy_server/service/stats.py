"""Counters of what the service did, kept in the process for logs, tests and metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

    def count(self, command: str, outcome: str) -> None:
        """Count one answer; ``command`` is what the caller sent, named ``allow``, ``report``
        or ``other`` (anyone who reaches the port chooses it: it must not make new series)."""
        command = command_label(command)
        self.requests[(command, outcome)] += 1
        if self.metrics is not None:
            self.metrics.requests.labels(command, outcome).inc()
            if outcome == "notice":
                self.metrics.notices.inc()

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
