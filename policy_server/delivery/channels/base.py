"""The interface every delivery channel implements, and the factory that builds one from config."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Literal

from ...config import (
    ChannelConfig,
    CommandChannelConfig,
    EmailChannelConfig,
    LogChannelConfig,
    SmsChannelConfig,
    WebhookChannelConfig,
)
from ...model import Notice, Recipient

if TYPE_CHECKING:
    from ..render import RenderedMessage

RecipientKind = Literal["email", "phone"] | None


class Channel(abc.ABC):
    """One way of delivering a rendered notice.

    The worker calls ``open`` once before the first ``send`` and ``close`` once at shutdown, so
    that connection pools live as long as the worker. ``send`` reports failure only by raising a
    :class:`~policy_server.delivery.channels.errors.DeliveryError` subclass.
    """

    name: str
    # what the channel needs to reach an account owner: an e-mail address, a phone number, or
    # nothing (log, webhook: the receiver knows the account)
    recipient_kind: RecipientKind = None

    async def open(self) -> None:  # noqa: B027 - most channels hold no resources
        """Acquire what ``send`` needs (client sessions, connections)."""

    @abc.abstractmethod
    async def send(
        self, notice: Notice, message: RenderedMessage, recipient: Recipient | None = None
    ) -> None:
        """Deliver ``message`` (``notice`` rendered for ``recipient``) to ``recipient``."""

    async def close(self) -> None:  # noqa: B027 - most channels hold no resources
        """Release what ``open`` acquired; safe to call when ``open`` was not."""


def build_channel(config: ChannelConfig) -> Channel:
    """The channel a ``[[channels]]`` entry describes.

    Raises ValueError when the entry cannot work (such as a malformed ``whsec_`` secret).
    """
    # imported here so that each channel's dependencies load only when that channel is configured
    if isinstance(config, WebhookChannelConfig):
        from .webhook import WebhookChannel

        return WebhookChannel(config)
    if isinstance(config, LogChannelConfig):
        from .log import LogChannel

        return LogChannel(config)
    if isinstance(config, EmailChannelConfig):
        from .email import EmailChannel

        return EmailChannel(config)
    if isinstance(config, SmsChannelConfig):
        from .sms import SmsChannel

        return SmsChannel(config)
    if isinstance(config, CommandChannelConfig):
        from .command import CommandChannel

        return CommandChannel(config)
    raise ValueError(f"unknown channel type {getattr(config, 'type', None)!r}")
