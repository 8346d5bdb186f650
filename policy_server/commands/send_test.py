"""``send-test``: render a sample notice for a login and send it through one channel, now.

It only reads the store (the login's contact) and queues nothing.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from typing import TextIO

from ..accounts import normalize_login
from ..config import Config
from ..delivery.channels.base import build_channel
from ..delivery.channels.errors import DeliveryError
from ..delivery.render import Renderer
from ..delivery.rules import recipient_for
from ..model import Notice, Reason
from .cli import Subparsers, add_command, config_command
from .session import store_session


def register(commands: Subparsers) -> None:
    test = add_command(
        commands,
        "send-test",
        config_command(lambda config, args: send_test(config, args.login, args.channel)),
        help="render a sample notice and send it through a channel",
    )
    test.add_argument("login", metavar="LOGIN")
    test.add_argument("--channel", required=True, metavar="NAME")


def sample_notice(login: str, account: str) -> Notice:
    return Notice(
        id=f"test-{uuid.uuid4()}",
        account=account,
        login=login,
        reasons=(Reason.NEW_COUNTRY, Reason.NEW_PROVIDER),
        protocol="imap",
        remote="192.0.2.1",
        time=datetime.now(UTC),
        country="DE",
        asn=64520,
        as_org="Example Net",
        prefix="192.0.2.0/24",
        protocols=("imap", "smtp"),
    )


async def send_test(
    config: Config, login: str, channel_name: str, out: TextIO | None = None
) -> int:
    """Render a sample notice for ``login`` and send it through one channel, now."""
    by_name = {c.name: c for c in config.channels}
    channel_config = by_name.get(channel_name)
    if channel_config is None:
        print(f"no channel {channel_name!r}; configured: {', '.join(by_name)}", file=sys.stderr)
        return 2
    account = normalize_login(login, config.accounts)
    async with store_session(config) as store:
        contact = await store.contact(account)
    try:
        channel = build_channel(channel_config)
    except ValueError as exc:
        print(f"{exc} (see policy-server check-config)", file=sys.stderr)
        return 1
    recipient = recipient_for(channel.recipient_kind, channel_config, contact, login)
    if recipient is None:
        print(
            f"{login}: no {channel.recipient_kind} address (contacts or fallback)", file=sys.stderr
        )
        return 1
    notice = sample_notice(login, account)
    message = Renderer(config.message, config.web, config.compromise.window_s).render(
        notice, recipient
    )
    await channel.open()
    try:
        await channel.send(notice, message, recipient)
    except DeliveryError as exc:
        kind = "temporary" if exc.temporary else "permanent"
        print(f"not delivered ({kind} failure): {exc}", file=sys.stderr)
        return 1
    finally:
        await channel.close()
    print(f"sent test notice {notice.id} to {recipient.address or channel_name}", file=out)
    print(message.body, file=out)
    return 0
