"""Counters of what the service did, kept in the process for logs, tests and metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    fail_open: int = 0
    notices_queued: int = 0

    def count(self, command: str, outcome: str) -> None:
        self.requests[(command, outcome)] += 1
