"""``check-config``: what in a config would not work, found without sending anything."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from ..config import Config, GeoipConfig, parse_listen
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
    response = config.response.command
    if response and shutil.which(response[0]) is None:
        problems.append(f"response.command: {response[0]!r} not found or not executable")
    return problems


def listen_problems(config: Config) -> list[str]:
    """Listen addresses whose host name does not resolve, or two listeners on one address."""
    listeners = [("server.listen", config.server.listen)]
    if config.metrics.enabled:
        listeners.append(("metrics.listen", config.metrics.listen))
    if config.web.listen:
        listeners.append(("web.listen", config.web.listen))
    problems: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for key, listen in listeners:
        # the config's own validation has parsed it already
        host, port = parse_listen(listen)
        if (host, port) in seen:
            problems.append(f"{key}: {listen} is also {seen[host, port]}")
        seen[host, port] = key
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"{key}: cannot resolve {host}: {reason}")
    return problems


def _mmdb_type(path: str) -> str | None:
    """The ``database_type`` of a MaxMind DB file; None when the file is not one."""
    import maxminddb

    try:
        reader = maxminddb.open_database(path)
    except maxminddb.InvalidDatabaseError:
        return None
    try:
        return str(reader.metadata().database_type)
    finally:
        reader.close()


def _country_problem(path: str) -> str | None:
    from ..origin.backends import open_country_file

    kind = _mmdb_type(path)
    if kind is None:
        return f"{path} is not a MaxMind DB file (a GeoIP2/GeoLite2 Country or City .mmdb)"
    if "Country" not in kind and "City" not in kind:
        return f"{path}: {kind} is not a Country or City database"
    open_country_file(path).close()
    return None


def _asn_problem(path: str) -> str | None:
    from ..origin.backends import open_asn_file

    if Path(path).stat().st_size == 0:
        return f"{path} is empty (neither a MaxMind ASN database nor a pyasn file)"
    kind = _mmdb_type(path)
    if kind is not None and "ASN" not in kind and "ISP" not in kind:
        return f"{path}: {kind} is not an ASN database (GeoLite2-ASN, GeoIP2-ISP)"
    try:
        # a MaxMind ASN database, else read as the service reads it: a pyasn file
        open_asn_file(path, None).close()
    except Exception as exc:
        if kind is not None:
            raise
        return (
            f"{path} is neither a MaxMind ASN database (.mmdb) nor a pyasn file (ipasn.dat,"
            f" plain or .gz): {exc}"
        )
    return None


def _asn_names_problem(path: str) -> str | None:
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        names = None
    if not isinstance(names, dict):
        return (
            f"{path} is not a JSON object of AS names"
            ' ({"64500": "Example Net", ...}, as pyasn_util_asnames.py writes)'
        )
    return None


def geo_problems(geoip: GeoipConfig) -> list[str]:
    """Each configured geo file that would not open as what its key says it is; the service
    would answer "unknown" for that part of every origin."""
    checks = (
        ("country_db", _country_problem),
        ("asn_db", _asn_problem),
        ("asn_names", _asn_names_problem),
    )
    problems: list[str] = []
    for key, check in checks:
        path = getattr(geoip, key)
        if not path:
            continue
        if not Path(path).is_file():
            problems.append(f"geoip.{key}: no such file {path!r} (origins would be unknown)")
            continue
        try:
            problem = check(path)
        except OSError as exc:
            problem = f"cannot read {path}: {exc.strerror or exc}"
        except Exception as exc:  # a damaged file can fail in any way: say so, don't crash
            problem = f"{path} cannot be opened: {type(exc).__name__}: {exc}"
        if problem:
            problems.append(f"geoip.{key}: {problem}")
    return problems


def signal_notes(config: Config) -> list[str]:
    """What the config asks for that its data cannot give (not an error: the signal stays
    silent)."""
    if config.policy.max_speed_kmh <= 0:
        return []
    path = config.geoip.country_db
    kind = _mmdb_type(path) if path and Path(path).is_file() else None
    if kind is not None and "City" in kind:
        return []
    what = f"{path} is {kind}" if kind else "no City database is configured"
    return [
        f"policy.max_speed_kmh: impossible_travel needs a City database as geoip.country_db;"
        f" {what}, so it never fires"
    ]


def check_config(args: argparse.Namespace) -> int:
    from ..delivery.render import Renderer, TemplateError
    from ..origin.networks import KnownNetworks, NetworksError

    config = load(args.config)
    problems: list[str] = []
    try:
        problems.extend(Renderer(config.message, config.web, config.compromise.window_s).check())
    except TemplateError as exc:
        problems.append(f"message: {exc}")
    problems.extend(channel_problems(config))
    try:
        KnownNetworks.load(config.networks)
    except NetworksError as exc:
        problems.extend(f"networks: {problem}" for problem in exc.problems)
    problems.extend(geo_problems(config.geoip))
    problems.extend(listen_problems(config))
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for note in signal_notes(config):
        print(f"  note: {note}", file=sys.stderr)
    print(f"{args.config or 'embedded defaults'}: OK")
    return 0
