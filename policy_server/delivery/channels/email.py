"""Delivery by e-mail through an SMTP relay (aiosmtplib)."""

from __future__ import annotations

import email.policy
import email.utils
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib

from ...config import EmailChannelConfig
from ...model import Notice, Recipient
from ..render import RenderedMessage
from .base import Channel
from .errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError


def message_id(notice: Notice, sender: str) -> str:
    """The same ``Message-ID`` on every attempt of a notice, so that duplicates can be seen."""
    domain = sender.rpartition("@")[2] or "localhost"
    local = "".join(c for c in notice.id if c.isalnum() or c in "-._") or "notice"
    return f"<{local}@{domain}>"


def build_message(
    notice: Notice,
    message: RenderedMessage,
    sender: str,
    to: str,
    now: datetime | None = None,
) -> EmailMessage:
    """A plain-text UTF-8 message marked as machine-sent (RFC 3834), never auto-answered."""
    mail = EmailMessage(policy=email.policy.SMTP)
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = message.subject
    mail["Date"] = email.utils.format_datetime(now or datetime.now(UTC))
    mail["Message-ID"] = message_id(notice, sender)
    mail["Auto-Submitted"] = "auto-generated"
    # Exchange and Outlook honour this one rather than Auto-Submitted
    mail["X-Auto-Response-Suppress"] = "All"
    mail.set_content(message.body, charset="utf-8")
    # after set_content, which drops every Content-* header already set
    mail["Content-Language"] = message.language
    return mail


def classify(exc: BaseException, label: str, secrets: tuple[str, ...]) -> DeliveryError:
    """An SMTP failure as a delivery error: 4xx and lost connections retry, 5xx do not.

    A refused login (535) is retried: it is the relay's configuration, not this notice, that is
    wrong, and the notice should go out once an operator fixes it.
    """
    text = f"{label}: {type(exc).__name__}: {exc}"
    for secret in secrets:
        text = text.replace(secret, "***")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
        if codes and all(400 <= code < 500 for code in codes):
            return TemporaryDeliveryError(text, status=codes[0])
        return PermanentDeliveryError(text, status=codes[0] if codes else None)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return TemporaryDeliveryError(text, status=exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600:
        return PermanentDeliveryError(text, status=exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return TemporaryDeliveryError(text, status=exc.code)
    # disconnects, timeouts, refused connections, TLS trouble
    return TemporaryDeliveryError(text)


class EmailChannel(Channel):
    """Sends each notice as its own message to the account owner's address."""

    recipient_kind = "email"

    def __init__(self, config: EmailChannelConfig) -> None:
        self.name = config.name or config.type
        self._config = config
        self._secrets = tuple(s for s in (config.password,) if s)

    async def send(
        self, notice: Notice, message: RenderedMessage, recipient: Recipient | None = None
    ) -> None:
        if recipient is None or not recipient.address:
            raise PermanentDeliveryError(f"email {self.name}: no recipient address")
        config = self._config
        mail = build_message(notice, message, config.sender, recipient.address)
        try:
            await aiosmtplib.send(
                mail,
                sender=config.sender,
                recipients=[recipient.address],
                hostname=config.host,
                port=config.port,
                username=config.username or None,
                password=config.password or None,
                use_tls=config.tls,
                start_tls=config.starttls,
                timeout=config.timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise classify(exc, f"email {self.name}", self._secrets) from None
