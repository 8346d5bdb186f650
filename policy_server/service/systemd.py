"""systemd's notify protocol (``Type=notify``): READY, RELOADING and STOPPING, with no library.

A datagram to the socket named in ``NOTIFY_SOCKET``; outside systemd the variable is unset and
every call does nothing. Under ``serve --workers N`` each service process's ``NOTIFY_SOCKET`` is
the supervisor's, which tells systemd READY=1 once every process is ready.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=…"``); True when a socket took them."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    message = "\n".join(states).encode()
    # never blocking: a receiver that does not read must not stall the loop answering Dovecot
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=…``, which systemd wants beside ``RELOADING=1``."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
