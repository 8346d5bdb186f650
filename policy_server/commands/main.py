"""The ``policy-server`` command: the root parser and the command groups that register in it.

Each module in ``GROUPS`` adds its own (sub)commands and binds each to its handler; ``main``
runs the handler the parsed command line carries. There is no dispatch table to keep in step.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from .. import __version__
from . import (
    account,
    blocks,
    check_config,
    contacts,
    control,
    history,
    import_log,
    lookup,
    outbox,
    replay,
    send_test,
    serve,
)
from .cli import CommandError, Handler

# in the order `policy-server --help` lists them
GROUPS = (
    serve,  # serve, worker, migrate
    check_config,
    lookup,
    contacts,  # contacts import|show|remove
    outbox,  # outbox counts|list|show|retry|purge|held|release|discard
    control,  # pause, resume, breaker status|close
    history,  # history show|export|forget
    account,
    blocks,  # blocks list|add|clear
    import_log,
    replay,
    send_test,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policy-server",
        description="Login-origin notices for Dovecot (auth-policy HTTP service).",
    )
    parser.add_argument("--version", action="version", version=f"policy-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    with _own_logging():
        try:
            return handler(args)
        except CommandError as exc:
            print(f"policy-server: {exc}", file=sys.stderr)
            return exc.status


@contextlib.contextmanager
def _own_logging() -> Iterator[None]:
    """The logging a command sets up (``setup_logging``: a handler on the stderr of the time,
    a level) lasts as long as the command: a caller running several in one process sees each
    one's lines on the stderr of its own call."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
