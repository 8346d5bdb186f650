"""The ``policy-server`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, load_config
from .logs import setup_logging

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

    from .app import create_app

    config = _load(args.config)
    if config is None:
        return 1
    setup_logging(args.log_level)
    app = create_app(config)
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
        print=None,
        shutdown_timeout=10,
    )
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .notify.render import Renderer, TemplateError

    config = _load(args.config)
    if config is None:
        return 1
    problems: list[str] = []
    try:
        problems.extend(Renderer(config.message).check())
    except TemplateError as exc:
        problems.append(f"message: {exc}")
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
    from .origin.address import AddressError
    from .origin.resolver import OriginResolver

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


def _cmd_outbox(args: argparse.Namespace) -> int:
    from .store import open_store

    config = _load(args.config)
    if config is None:
        return 1

    async def run() -> int:
        store = await open_store(config.storage)
        try:
            if args.outbox_command == "counts":
                counts = await store.outbox_counts()
                for status in ("queued", "sending", "sent", "dead"):
                    print(f"{status:8} {counts.get(status, 0)}")
                return 0
            rows = await store.list_deliveries(args.status, args.limit)
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


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
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file; exit 1 on errors")
    _add_config(check)
    check.set_defaults(func=_cmd_check_config)

    lookup = sub.add_parser("lookup", help="print the origin of IP addresses")
    lookup.add_argument("address", nargs="+", metavar="IP")
    _add_config(lookup)
    lookup.set_defaults(func=_cmd_lookup)

    outbox = sub.add_parser("outbox", help="inspect the notice queue")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    counts = outbox_sub.add_parser("counts", help="deliveries by status")
    _add_config(counts)
    listing = outbox_sub.add_parser("list", help="recent deliveries as JSON lines")
    _add_config(listing)
    listing.add_argument("--status", choices=["queued", "sending", "sent", "dead"])
    listing.add_argument("--limit", type=int, default=50)
    outbox.set_defaults(func=_cmd_outbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
