"""Delivery by a local program: the notice as JSON on its standard input."""

from __future__ import annotations

import json
from typing import Any

from ...config import CommandChannelConfig
from ...model import Notice, Recipient
from ...programs import ProgramError, run_program
from ..render import RenderedMessage
from .base import Channel
from .errors import PermanentDeliveryError, TemporaryDeliveryError

EX_TEMPFAIL = 75  # sysexits.h: "try again later", as mail delivery agents use it


def stdin_document(
    notice: Notice, message: RenderedMessage, recipient: Recipient | None
) -> dict[str, Any]:
    """What the program reads: the webhook fields plus the rendered texts and the recipient."""
    return {
        **notice.payload_fields(),
        "message": message.body,
        "subject": message.subject,
        "short": message.short,
        "language": message.language,
        "recipient": recipient.address if recipient and recipient.address else None,
    }


class CommandChannel(Channel):
    """Runs ``command`` once per notice: exit 0 delivered, 75 retried, anything else final."""

    def __init__(self, config: CommandChannelConfig) -> None:
        self.name = config.name or config.type
        self._config = config
        self.recipient_kind = None if config.recipient == "none" else config.recipient

    async def send(
        self, notice: Notice, message: RenderedMessage, recipient: Recipient | None = None
    ) -> None:
        label = f"command {self.name}"
        data = json.dumps(stdin_document(notice, message, recipient), ensure_ascii=False)
        try:
            exited = await run_program(
                self._config.command, data.encode("utf-8") + b"\n", self._config.timeout_s
            )
        except ProgramError as exc:
            # a missing program or one that hangs: an operator can fix it, so keep the notice
            raise TemporaryDeliveryError(f"{label}: {exc}") from None
        if exited.code == 0:
            return
        text = f"{label}: exit status {exited.code}" + (
            f": {exited.stderr}" if exited.stderr else ""
        )
        if exited.code == EX_TEMPFAIL:
            raise TemporaryDeliveryError(text)
        raise PermanentDeliveryError(text)
