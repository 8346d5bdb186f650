"""Counters of what the service did, kept in the process for logs, tests and metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .metrics import Metrics


@dataclass
class Stats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    fail_open: int = 0
    notices_queued: int = 0
    metrics: Metrics | None = None

    def count(self, command: str, outcome: str) -> None:
        self.requests[(command, outcome)] += 1
        if self.metrics is not None:
            self.metrics.requests.labels(command, outcome).inc()
            if outcome == "fail_open":
                self.metrics.fail_open.inc()
            elif outcome == "notice":
                self.metrics.notices.inc()

    def decided(self, reasons: Iterable[str]) -> None:
        if self.metrics is not None:
            for reason in reasons:
                self.metrics.decisions.labels(reason).inc()
