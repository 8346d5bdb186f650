"""A channel that only writes the notice to the log: for trials, previews and as a fallback."""

from __future__ import annotations

import logging

from ...config import LogChannelConfig
from ...model import Notice, Recipient
from ..render import RenderedMessage
from .base import Channel

logger = logging.getLogger("policy_server.notify")

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` with backslashes and control characters escaped.

    Log readers and collectors split records on newlines; a login or message must not be able to
    forge a second record.
    """
    out: list[str] = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " " or char == "\x7f" or "\x80" <= char < "\xa0" or char in "\u2028\u2029":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


class LogChannel(Channel):
    """Logs one INFO line per notice on ``policy_server.notify``; never fails."""

    def __init__(self, config: LogChannelConfig) -> None:
        self.name = config.name or config.type

    async def send(
        self, notice: Notice, message: RenderedMessage, recipient: Recipient | None = None
    ) -> None:
        logger.info(
            "notice channel=%s id=%s login=%s reasons=%s message=%s",
            self.name,
            notice.id,
            one_line(notice.login),
            ",".join(reason.value for reason in notice.reasons),
            one_line(message.body),
        )
