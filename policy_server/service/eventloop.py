"""The event loop the service runs on: uvloop where it is installed (a default dependency).

uvloop's loop is written in C over libuv; it answers the same aiohttp handler with less Python
per request than the standard loop. ``POLICY_SERVER_LOOP=asyncio`` asks for the standard loop
(to compare, or to rule the loop out when chasing a problem).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOP_ENV = "POLICY_SERVER_LOOP"
#: how long a thread may hold the interpreter before one waiting gets it (Python's default is
#: 5 ms): the delivery thread and the store's threads then hold up an answer for at most this
SWITCH_INTERVAL_S = 0.0005


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop: uvloop's unless it is missing or the environment says no."""
    if os.environ.get(LOOP_ENV, "") != "asyncio":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a default dependency
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``, for the start-up log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def favour_the_loop() -> None:
    """Let the answering loop take the interpreter back from the process's other threads
    within ``SWITCH_INTERVAL_S``; measured in bench/throughput.py (the delivery and burst
    turns' login p99)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return loop_factory()()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the service's loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coroutine)
