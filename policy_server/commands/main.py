"""The ``policy-server`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..logs import setup_logging

log = logging.getLogger("policy_server")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="TOML config file (default: the embedded defaults)",
    )


def _load(path: str | None) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"policy-server: invalid config {path}:", file=sys.stderr)
        for key, message in exc.errors:
            print(f"  {key}: {message}", file=sys.stderr)
        return None


def _cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..service.app import create_app

    config = _load(args.config)
    if config is None:
        return 1
    setup_logging(args.log_level, config.logging.format)
    if args.workers > 1:
        from ..service.processes import supervise

        child = ["serve", "--log-level", args.log_level, "--reuse-port"]
        if args.no_worker:
            child.append("--no-worker")
        if args.config:
            child += ["-c", args.config]
        return supervise(child, args.workers)
    app = create_app(config, run_worker=not args.no_worker, reuse_port=args.reuse_port)
    log.info(
        "policy-server %s listening on %s (config: %s)",
        __version__,
        config.server.listen,
        args.config or "embedded defaults",
    )
    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
        access_log=logging.getLogger("aiohttp.access") if config.server.access_log else None,
        # called once the listener is up: then systemd may start Dovecot
        print=lambda _message: _ready(config),
        shutdown_timeout=10,
        reuse_port=args.reuse_port or None,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from ..delivery.process import run_worker
    from ..store.base import StoreError

    config = _load(args.config)
    if config is None:
        return 1
    setup_logging(args.log_level, config.logging.format)
    try:
        asyncio.run(run_worker(config))
    except StoreError as exc:
        print(f"policy-server: store unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ..store import open_store
    from ..store.base import StoreError

    config = _load(args.config)
    if config is None:
        return 1
    setup_logging("info")

    async def run() -> None:
        store = await open_store(config.storage)
        await store.close()

    try:
        asyncio.run(run())
    except StoreError as exc:
        print(f"policy-server: {exc}", file=sys.stderr)
        return 1
    print(f"{config.storage.backend} store schema up to date")
    return 0


def _ready(config: Config) -> None:
    from ..service.systemd import notify

    notify("READY=1", f"STATUS=answering on {config.server.listen}")


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


def _cmd_check_config(args: argparse.Namespace) -> int:
    from ..delivery.render import Renderer, TemplateError

    config = _load(args.config)
    if config is None:
        return 1
    problems: list[str] = []
    try:
        problems.extend(Renderer(config.message).check())
    except TemplateError as exc:
        problems.append(f"message: {exc}")
    problems.extend(channel_problems(config))
    from ..origin.networks import KnownNetworks, NetworksError

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


def _cmd_lookup(args: argparse.Namespace) -> int:
    from ..origin.address import AddressError
    from ..origin.resolver import OriginResolver

    config = _load(args.config)
    if config is None:
        return 1
    setup_logging("warning")
    resolver = OriginResolver.from_config(config.geoip)
    status = 0
    try:
        for text in args.address:
            try:
                origin = resolver.resolve(text)
            except AddressError as exc:
                print(f"{text}: {exc}", file=sys.stderr)
                status = 1
                continue
            print(
                json.dumps(
                    {
                        "address": origin.address,
                        "class": origin.address_class.value,
                        "prefix": origin.prefix,
                        "country": origin.country,
                        "asn": origin.asn,
                        "as_org": origin.as_org,
                        "provider": origin.provider,
                    },
                    ensure_ascii=False,
                )
            )
    finally:
        resolver.close()
    return status


STATUSES = (
    "queued",
    "sending",
    "sent",
    "folded",
    "undeliverable",
    "dead",
    "held",
    "discarded",
    "shadow",
)


def _run_admin(args: argparse.Namespace) -> int:
    """The operator commands: each opens the store, does one thing, closes it."""
    from ..delivery.render import TemplateError
    from ..store import open_store
    from ..store.base import StoreError
    from . import admin
    from . import control as control
    from . import history as history

    config = _load(args.config)
    if config is None:
        return 1

    async def counts() -> int:
        store = await open_store(config.storage)
        try:
            found = await store.outbox_counts()
        finally:
            await store.close()
        for status in STATUSES:
            print(f"{status:14} {found.get(status, 0)}")
        return 0

    async def listing() -> int:
        store = await open_store(config.storage)
        try:
            rows = await store.list_deliveries(args.status, args.limit)
        finally:
            await store.close()
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0

    actions: dict[tuple[str, str | None], Callable[[], Coroutine[Any, Any, int]]] = {
        ("contacts", "import"): lambda: admin.contacts_import(config, Path(args.file)),
        ("contacts", "show"): lambda: admin.contacts_show(config, args.login),
        ("contacts", "remove"): lambda: admin.contacts_remove(config, args.login),
        ("outbox", "counts"): counts,
        ("outbox", "list"): listing,
        ("outbox", "show"): lambda: admin.outbox_show(config, args.id),
        ("outbox", "retry"): lambda: admin.outbox_retry(config, args.id),
        ("outbox", "purge"): lambda: admin.outbox_purge(config, args.older_than),
        ("outbox", "held"): lambda: control.outbox_held(config, control.held_filter(config, args)),
        ("outbox", "release"): lambda: control.outbox_release(
            config, control.held_filter(config, args)
        ),
        ("outbox", "discard"): lambda: control.outbox_discard(
            config, control.held_filter(config, args)
        ),
        ("pause", None): lambda: control.set_pause(config, True),
        ("resume", None): lambda: control.set_pause(config, False),
        ("breaker", "status"): lambda: control.breaker_status(config),
        ("breaker", "close"): lambda: control.breaker_close(config),
        ("send-test", None): lambda: admin.send_test(config, args.login, args.channel),
        ("history", "show"): lambda: history.history_show(config, args.login),
        ("history", "export"): lambda: history.history_export(config, args.login),
        ("history", "forget"): lambda: history.history_forget(config, args.login),
        ("import-log", None): lambda: history.import_log(
            config, [Path(f) for f in args.files], _log_zone(args.log_timezone)
        ),
    }
    action = actions[(args.command, getattr(args, "action", None))]
    try:
        result: int = asyncio.run(action())
    except StoreError as exc:
        print(f"policy-server: store unavailable: {exc}", file=sys.stderr)
        return 1
    except TemplateError as exc:
        print(f"policy-server: templates: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"policy-server: {exc}", file=sys.stderr)
        return 1
    return result


def _log_zone(name: str) -> tzinfo:
    """The zone of log timestamps that carry no offset: a name, or the system's own."""
    if name == "local":
        zone = datetime.now().astimezone().tzinfo
        assert zone is not None
        return zone
    return ZoneInfo(name)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ..origin.networks import NetworksError
    from .history import replay_configs

    current = _load(args.current)
    candidate = _load(args.candidate)
    if current is None or candidate is None:
        return 1
    setup_logging("warning")
    configs = {"current": current, "candidate": candidate}
    try:
        return asyncio.run(
            replay_configs(
                configs,
                [Path(f) for f in args.files],
                _log_zone(args.log_timezone),
                args.json,
            )
        )
    except (OSError, NetworksError) as exc:
        print(f"policy-server: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policy-server",
        description="Login-origin notices for Dovecot (auth-policy HTTP service).",
    )
    parser.add_argument("--version", action="version", version=f"policy-server {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the service")
    _add_config(serve)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes sharing the port (SO_REUSEPORT) and the store",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="answer Dovecot only; deliveries are left to `policy-server worker` processes",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    work = sub.add_parser("worker", help="deliver queued notices (no HTTP listener)")
    _add_config(work)
    work.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    work.set_defaults(func=_cmd_worker)

    migrate = sub.add_parser("migrate", help="bring the store's schema up to date")
    _add_config(migrate)
    migrate.set_defaults(func=_cmd_migrate)
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file; exit 1 on errors")
    _add_config(check)
    check.set_defaults(func=_cmd_check_config)

    lookup = sub.add_parser("lookup", help="print the origin of IP addresses")
    lookup.add_argument("address", nargs="+", metavar="IP")
    _add_config(lookup)
    lookup.set_defaults(func=_cmd_lookup)

    contacts = sub.add_parser("contacts", help="who receives each account's notices")
    contacts_sub = contacts.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = contacts_sub.add_parser(
        "import",
        help="add or replace contacts from a CSV file (login,email,phone,language,timezone)",
    )
    imp.add_argument("file", metavar="FILE.csv")
    _add_config(imp)
    for name, text in (("show", "print an account's contact"), ("remove", "delete it")):
        one = contacts_sub.add_parser(name, help=text)
        one.add_argument("login", metavar="LOGIN")
        _add_config(one)
    contacts.set_defaults(func=_run_admin)

    outbox = sub.add_parser("outbox", help="inspect and act on the notice queue")
    outbox_sub = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    counts = outbox_sub.add_parser("counts", help="deliveries by status")
    _add_config(counts)
    listing = outbox_sub.add_parser("list", help="recent deliveries as JSON lines")
    _add_config(listing)
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--limit", type=int, default=50)
    show = outbox_sub.add_parser(
        "show", help="a notice: reasons, history seen, message per channel, attempts and errors"
    )
    show.add_argument("id", metavar="ID")
    _add_config(show)
    retry = outbox_sub.add_parser("retry", help="queue a dead or undeliverable notice again")
    retry.add_argument("id", metavar="ID")
    _add_config(retry)
    purge = outbox_sub.add_parser("purge", help="delete finished notices older than an age")
    purge.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    _add_config(purge)
    for name, text in (
        ("held", "held notices counted by reason, provider, country and channel"),
        ("release", "send held notices (at [breaker] release_per_s, oldest first)"),
        ("discard", "drop held notices, recording who and when"),
    ):
        held = outbox_sub.add_parser(name, help=text)
        held.add_argument("--reason", metavar="REASON", help="e.g. new_provider")
        held.add_argument("--provider", metavar="PROVIDER", help="e.g. AS64500")
        held.add_argument("--country", metavar="CC", help="e.g. US")
        held.add_argument("--login", metavar="LOGIN", help="one account")
        _add_config(held)
    outbox.set_defaults(func=_run_admin)

    for name, text in (
        ("pause", "stop every owner notice, in every process sharing the store"),
        ("resume", "start owner notices again after pause"),
    ):
        switch = sub.add_parser(name, help=text)
        _add_config(switch)
        switch.set_defaults(func=_run_admin, action=None)
    breaker = sub.add_parser("breaker", help="the fleet-wide breaker and the geo-data hold")
    breaker_sub = breaker.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("status", "pause, breaker and geo hold, with the numbers that tripped it"),
        ("close", "close the breaker and accept changed geo data (held notices stay held)"),
    ):
        one = breaker_sub.add_parser(name, help=text)
        _add_config(one)
    breaker.set_defaults(func=_run_admin)

    hist = sub.add_parser("history", help="an account's origins and decisions; privacy requests")
    hist_sub = hist.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("show", "origins (known or forgotten) and recent decisions with their reasons"),
        ("export", "everything stored about the account, as JSON"),
        ("forget", "delete everything stored about the account"),
    ):
        one = hist_sub.add_parser(name, help=text)
        one.add_argument("login", metavar="LOGIN")
        _add_config(one)
    hist.set_defaults(func=_run_admin)

    zone_help = 'time zone of log timestamps without an offset (default "local": the system\'s)'
    imp_log = sub.add_parser(
        "import-log",
        help="build history from Dovecot login log lines (gzip too); queues no notice",
    )
    imp_log.add_argument("files", nargs="+", metavar="FILE")
    imp_log.add_argument("--log-timezone", default="local", metavar="ZONE", help=zone_help)
    _add_config(imp_log)
    imp_log.set_defaults(func=_run_admin, action=None)

    rep = sub.add_parser(
        "replay",
        help="run past logins through the current and a candidate config; compare the notices",
    )
    rep.add_argument("files", nargs="+", metavar="FILE", help="Dovecot logs or an events export")
    rep.add_argument(
        "--config", dest="candidate", required=True, metavar="CANDIDATE", help="the candidate"
    )
    rep.add_argument(
        "-c",
        "--current",
        metavar="FILE",
        help="the config in use (default: the embedded defaults)",
    )
    rep.add_argument("--json", action="store_true", help="print the figures as JSON")
    rep.add_argument("--log-timezone", default="local", metavar="ZONE", help=zone_help)
    rep.set_defaults(func=_cmd_replay)

    test = sub.add_parser("send-test", help="render a sample notice and send it through a channel")
    test.add_argument("login", metavar="LOGIN")
    test.add_argument("--channel", required=True, metavar="NAME")
    _add_config(test)
    test.set_defaults(func=_run_admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
