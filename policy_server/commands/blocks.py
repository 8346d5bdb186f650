"""``blocks list|add|clear``: accounts' blocks of an origin, refused on ``allow``.

A block made or cleared here is enforced by every running service within a few seconds: each
one reads the store's blocks again when they changed.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from typing import TextIO

from ..accounts import normalize_login
from ..config import Config
from ..logs import setup_logging
from ..model import Origin
from ..origin.address import AddressError
from ..origin.resolver import OriginResolver
from ..service.blocks import target_for, targets_of
from ..store.base import Block, BlockSource
from .cli import CommandError, Subparsers, add_command, add_group, config_command, when
from .session import store_session

DAY = 86400.0


def register(commands: Subparsers) -> None:
    actions = add_group(
        commands, "blocks", help="accounts' blocks of an origin (logins from it are refused)"
    )
    list_ = add_command(
        actions,
        "list",
        config_command(lambda config, args: blocks_list(config, args.login)),
        help="the blocks in force (of one account, or of all)",
    )
    list_.add_argument("login", metavar="LOGIN", nargs="?")
    add = add_command(
        actions,
        "add",
        config_command(lambda config, args: blocks_add(config, args.login, args.origin, args.days)),
        help="refuse an account's logins from an origin ([response] block_scope) for a while",
    )
    add.add_argument("login", metavar="LOGIN")
    add.add_argument("origin", metavar="ORIGIN", help="an IP address or a network prefix")
    add.add_argument(
        "--days",
        type=_days,
        metavar="N",
        help="how long, 1 to 365 days (default: [response] block_days)",
    )
    clear = add_command(
        actions,
        "clear",
        config_command(lambda config, args: blocks_clear(config, args.login, args.origin)),
        help="lift an account's blocks (every one, or those covering ORIGIN)",
    )
    clear.add_argument("login", metavar="LOGIN")
    clear.add_argument(
        "origin", metavar="ORIGIN", nargs="?", help="an IP address or a network prefix"
    )


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 1 <= days <= 365:
        raise argparse.ArgumentTypeError(f"must be 1 to 365 days, not {days}")
    return days


def resolve_origin(config: Config, text: str) -> Origin:
    """The origin an operator names: an address, or a prefix of the configured width."""
    geoip = config.geoip
    candidate = text.strip()
    if "/" in candidate:
        try:
            network = ipaddress.ip_network(candidate, strict=False)
        except ValueError:
            raise CommandError(f"not an IP address or network prefix: {text!r}") from None
        bits = geoip.ipv4_prefix if network.version == 4 else geoip.ipv6_prefix
        if network.prefixlen != bits:
            key = "ipv4_prefix" if network.version == 4 else "ipv6_prefix"
            raise CommandError(
                f"{text}: origins are /{bits} prefixes here ([geoip] {key});"
                f" give an address or a /{bits} prefix"
            )
        candidate = str(network.network_address)
    setup_logging("warning")
    resolver = OriginResolver.from_config(geoip)
    try:
        return resolver.resolve(candidate)
    except AddressError as exc:
        raise CommandError(f"not an IP address or network prefix: {text!r}") from exc
    finally:
        resolver.close()


def _line(block: Block) -> str:
    via = f" from notice {block.notice_id}" if block.notice_id else ""
    return (
        f"{block.account}  {block.target.describe()}  until {when(block.until)}"
        f"  (by {block.source.value}{via}, since {when(block.created)})"
    )


async def blocks_list(config: Config, login: str | None, out: TextIO | None = None) -> int:
    account = None if login is None else normalize_login(login, config.accounts)
    async with store_session(config) as store:
        found = await store.list_blocks(time.time(), account)
    for block in found:
        print(_line(block), file=out)
    print(f"{len(found)} block(s) in force", file=sys.stderr)
    return 0


async def blocks_add(
    config: Config, login: str, origin_text: str, days: int | None, out: TextIO | None = None
) -> int:
    origin = resolve_origin(config, origin_text)
    target = target_for(origin, config.response.block_scope)
    now = time.time()
    span = (days or config.response.block_days) * DAY
    block = Block(
        account=normalize_login(login, config.accounts),
        target=target,
        created=now,
        until=now + span,
        source=BlockSource.OPERATOR,
    )
    async with store_session(config, migrate=True) as store:
        stored = await store.add_block(block, now)
    print(f"blocked {_line(stored)}", file=out)
    return 0


async def blocks_clear(
    config: Config, login: str, origin_text: str | None, out: TextIO | None = None
) -> int:
    targets = None if origin_text is None else targets_of(resolve_origin(config, origin_text))
    account = normalize_login(login, config.accounts)
    async with store_session(config, migrate=True) as store:
        cleared = await store.clear_blocks(account, targets)
    if not cleared:
        what = f" covering {origin_text}" if origin_text else ""
        raise CommandError(f"no block of {login}{what}")
    print(f"cleared {cleared} block(s) of {login}", file=out)
    return 0
