"""Listening sockets bound before the service starts, with failures said in one line.

aiohttp binds its sockets only once the whole application has started, and a failure there is
an ``OSError`` with a traceback. Binding here first gives the operator ``cannot listen on
127.0.0.1:4001: address already in use`` at once; aiohttp then serves the bound sockets.
"""

from __future__ import annotations

import contextlib
import errno
import socket

from ..config import parse_listen

BACKLOG = 128  # aiohttp's default


class ListenError(Exception):
    """An address the service cannot listen on: the address and the cause, in one line."""


def _cause(exc: OSError, host: str) -> str:
    if isinstance(exc, socket.gaierror):
        reason = exc.strerror or str(exc)
        return f"cannot resolve {host} ({reason[:1].lower()}{reason[1:]})"
    if exc.errno is not None:
        reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        reason = str(exc)
    return reason[:1].lower() + reason[1:]


def describe(address: str, exc: OSError) -> str:
    """``cannot listen on ADDRESS: CAUSE`` for an error of resolving, binding or listening."""
    return f"cannot listen on {address}: {_cause(exc, parse_listen(address)[0])}"


def bind(address: str, *, reuse_port: bool = False) -> list[socket.socket]:
    """Sockets bound to every address the host of ``address`` (``host:port``) resolves to, not
    listening yet.

    As asyncio's ``create_server`` does: SO_REUSEADDR, IPv6 sockets IPv6 only, SO_REUSEPORT
    when asked (several processes on one port). Call :func:`listen` on them once the service is
    ready to accept; until then the kernel gives them no connection.
    """
    host, port = parse_listen(address)
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ListenError(describe(address, exc)) from exc
    sockets: list[socket.socket] = []
    bound: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _name, sockaddr in infos:
            if (family, str(sockaddr[0])) in bound:
                continue  # getaddrinfo may give the same address twice
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            bound.add((family, str(sockaddr[0])))
    except OSError as exc:
        close(sockets)
        raise ListenError(describe(address, exc)) from exc
    return sockets


def listen(address: str, sockets: list[socket.socket]) -> None:
    """Start listening on ``sockets`` (from :func:`bind` of ``address``)."""
    try:
        for sock in sockets:
            sock.listen(BACKLOG)
    except OSError as exc:
        raise ListenError(describe(address, exc)) from exc


def close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
