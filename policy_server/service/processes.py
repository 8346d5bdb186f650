"""``serve --workers N``: N service processes sharing one listening port (SO_REUSEPORT).

The kernel spreads connections over the processes; each has its own event loop, group commit
and delivery worker, and they share the store, whose transactions keep claims and history
updates correct across processes. This parent only starts them, passes signals on, and
restarts one that dies.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from .systemd import notify

log = logging.getLogger("policy_server.processes")

RESTART_DELAY_S = 1.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux to send SIGTERM when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: children outlive a killed parent


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    # the command is this interpreter running this package: no outside input
    return subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: S603


def supervise(child_args: Sequence[str], count: int) -> int:
    """Run ``count`` copies of ``python -m policy_server <child_args>`` until told to stop."""
    command = [sys.executable, "-m", "policy_server", *child_args]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            notify("STOPPING=1")
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    children.extend(_spawn(command) for _ in range(count))
    notify("READY=1", f"STATUS={count} service processes")
    log.info("started %d service processes: %s", count, [c.pid for c in children])
    while True:
        alive = [c for c in children if c.poll() is None]
        if stopping and not alive:
            return 0
        if not stopping:
            for index, child in enumerate(children):
                if child.poll() is not None:
                    log.error(
                        "service process %d exited with %s; starting another",
                        child.pid,
                        child.returncode,
                    )
                    time.sleep(RESTART_DELAY_S)
                    children[index] = _spawn(command)
        time.sleep(0.2)
