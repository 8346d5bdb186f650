"""``lookup``: the origin of IP addresses, as the service would resolve them."""

from __future__ import annotations

import argparse
import json
import sys

from ..logs import setup_logging
from .cli import Subparsers, add_command, load


def register(commands: Subparsers) -> None:
    lookup_ = add_command(commands, "lookup", lookup, help="print the origin of IP addresses")
    lookup_.add_argument("address", nargs="+", metavar="IP")


def lookup(args: argparse.Namespace) -> int:
    from ..origin.address import AddressError
    from ..origin.resolver import OriginResolver

    config = load(args.config)
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
