"""Delivery by a local program: the notice as JSON on its standard input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

from ...config import CommandChannelConfig
from ...model import Notice, Recipient
from ..render import RenderedMessage
from .base import Channel
from .errors import PermanentDeliveryError, TemporaryDeliveryError

EX_TEMPFAIL = 75  # sysexits.h: "try again later", as mail delivery agents use it
STDERR_CHARS = 300


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
            process = await asyncio.create_subprocess_exec(
                *self._config.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # its own process group, so a timeout also stops what it started
                start_new_session=True,
            )
        except OSError as exc:
            # a missing or non-executable program: an operator can fix it, so keep the notice
            raise TemporaryDeliveryError(f"{label}: cannot start: {exc}") from None
        try:
            async with asyncio.timeout(self._config.timeout_s):
                _, stderr = await process.communicate(data.encode("utf-8") + b"\n")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise TemporaryDeliveryError(
                f"{label}: no exit within {self._config.timeout_s:g}s, killed"
            ) from None
        code = process.returncode
        if code == 0:
            return
        detail = " ".join(stderr.decode("utf-8", "replace").split())[:STDERR_CHARS]
        text = f"{label}: exit status {code}" + (f": {detail}" if detail else "")
        if code == EX_TEMPFAIL:
            raise TemporaryDeliveryError(text)
        raise PermanentDeliveryError(text)
