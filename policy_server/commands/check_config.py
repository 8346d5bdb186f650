"""``check-config``: what in a config would not work, found without sending anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import Config
from .cli import Subparsers, add_command, load


def register(commands: Subparsers) -> None:
    add_command(
        commands, "check-config", check_config, help="validate a config file; exit 1 on errors"
    )


def channel_problems(config: Config) -> list[str]:
    """What would stop a configured channel from working, found without sending anything."""
    import shutil

    from ..config import CommandChannelConfig
    from ..delivery.channels.base import build_channel

    problems: list[str] = []
    for index, channel in enumerate(config.channels):
        where = f"channels[{index}] ({channel.name})"
        try:
            build_channel(channel)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
        if isinstance(channel, CommandChannelConfig) and shutil.which(channel.command[0]) is None:
            problems.append(f"{where}: command {channel.command[0]!r} not found or not executable")
    return problems


def check_config(args: argparse.Namespace) -> int:
    from ..delivery.render import Renderer, TemplateError
    from ..origin.networks import KnownNetworks, NetworksError

    config = load(args.config)
    problems: list[str] = []
    try:
        problems.extend(Renderer(config.message).check())
    except TemplateError as exc:
        problems.append(f"message: {exc}")
    problems.extend(channel_problems(config))
    try:
        KnownNetworks.load(config.networks)
    except NetworksError as exc:
        problems.extend(f"networks: {problem}" for problem in exc.problems)
    for key in ("country_db", "asn_db", "asn_names"):
        value = getattr(config.geoip, key)
        if value and not Path(value).is_file():
            problems.append(f"geoip.{key}: no such file {value!r} (origins would be unknown)")
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{args.config or 'embedded defaults'}: OK")
    return 0
