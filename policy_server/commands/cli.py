"""What every command module shares: ``-c/--config``, handlers, one-line failures, small helpers.

A command module's ``register(commands)`` adds its parsers with :func:`add_command`, which binds
each to its handler; ``main`` runs whichever handler the parsed arguments carry.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeAlias
from zoneinfo import ZoneInfo

from ..config import Config, ConfigError, load_config

if TYPE_CHECKING:
    #: what a command module's ``register`` adds its parsers to
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Subparsers = argparse._SubParsersAction

#: what a parsed command line runs: its exit status
Handler: TypeAlias = Callable[[argparse.Namespace], int]
#: a command that needs the service's config and runs in an event loop
ConfigCommand: TypeAlias = Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]

ZONE_HELP = 'time zone of log timestamps without an offset (default "local": the system\'s)'


class CommandError(Exception):
    """A failure the operator can act on: ``policy-server: MESSAGE`` on stderr, exit ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_config(parser: argparse.ArgumentParser) -> None:
    """``-c/--config FILE``: the service's config, the same option in every command."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=(
            "TOML config file; relative paths in it are taken from its directory (default: the"
            " embedded defaults, with the store var/policy-server.sqlite3 in the current"
            " directory)"
        ),
    )


def add_command(
    commands: Subparsers,
    name: str,
    handler: Handler,
    *,
    help: str,
    config: bool = True,
    **options: Any,
) -> argparse.ArgumentParser:
    """A (sub)command bound to ``handler``, with ``-c/--config`` unless ``config=False``."""
    parser = commands.add_parser(name, help=help, **options)
    if config:
        add_config(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_group(commands: Subparsers, name: str, *, help: str) -> Subparsers:
    """A command made of actions (``outbox counts``, ``outbox list``...): their subparsers."""
    group = commands.add_parser(name, help=help)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def load(path: str | None) -> Config:
    """The config at ``path`` (None: the embedded defaults); each problem on a line of its own."""
    try:
        return load_config(path)
    except ConfigError as exc:
        lines = [f"invalid config {path}:", *(f"  {key}: {message}" for key, message in exc.errors)]
        raise CommandError("\n".join(lines)) from exc


def config_command(command: ConfigCommand) -> Handler:
    """A handler that loads ``-c/--config`` and runs ``command(config, args)`` to its end."""

    def handler(args: argparse.Namespace) -> int:
        return run(command(load(args.config), args))

    handler.__name__ = handler.__qualname__ = command.__name__
    handler.__doc__ = command.__doc__
    return handler


def run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine in an event loop of its own; what it could not do is one line."""
    from ..delivery.render import TemplateError

    try:
        return asyncio.run(coroutine)
    except TemplateError as exc:
        raise CommandError(f"templates: {exc}") from exc
    except OSError as exc:
        raise CommandError(str(exc)) from exc


def operator() -> str:
    """Who runs the command, for the record: the sudo user, else the login name."""
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def when(value: Any) -> str:
    """A unix time as ISO 8601 in UTC, to the second; ``-`` when there is none."""
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def log_zone(name: str) -> tzinfo:
    """The zone of log timestamps that carry no offset: a name, or the system's own."""
    if name == "local":
        zone = datetime.now().astimezone().tzinfo
        assert zone is not None
        return zone
    return ZoneInfo(name)
