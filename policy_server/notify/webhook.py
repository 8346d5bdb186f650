"""Delivery by HTTP POST of a JSON object, signed in the Standard Webhooks scheme."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .. import __version__
from ..config import WebhookChannelConfig
from ..model import Notice
from .channels import Channel
from .errors import PermanentDeliveryError, TemporaryDeliveryError
from .signing import secret_key, sign

USER_AGENT = f"policy-server/{__version__}"

# A peer asking for a longer pause would stall a notice well past the point where it is useful;
# the worker's own backoff takes over from there.
MAX_RETRY_AFTER_S = 3600.0

# Enough of an error body to show what the peer complained about, not enough to flood the log.
ERROR_BODY_CHARS = 200
_ERROR_BODY_READ_BYTES = 4 * ERROR_BODY_CHARS

_TEMPORARY_STATUSES = frozenset({408, 429})

# Headers that carry the body's framing or its signature: an admin's [channels.headers] must not
# be able to break either.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), capped.

    None when the value is absent or unreadable; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        delay = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            # RFC 9110 dates are always GMT
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        delay = when.timestamp() - current
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


def is_temporary_status(status: int) -> bool:
    """Whether an HTTP status means "try again later" rather than "this will never work"."""
    return status in _TEMPORARY_STATUSES or 500 <= status <= 599


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class WebhookChannel(Channel):
    """POSTs ``notice.payload_fields()`` plus ``message`` as JSON to the configured URL.

    2xx is delivered; 408, 429 and 5xx are temporary (honouring ``Retry-After``); every other
    status, redirects included, is permanent. Network errors and timeouts are temporary.
    """

    def __init__(
        self, config: WebhookChannelConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = config.name or config.type
        self._url = URL(config.url)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._clock = clock
        try:
            self._key = secret_key(config.secret) if config.secret else None
        except ValueError as exc:
            raise ValueError(f"channel {self.name!r}: secret: {exc}") from None
        self._extra_headers = {
            name: value
            for name, value in config.headers.items()
            if name.lower() not in _RESERVED_HEADERS
        }
        # text that must never reach an error message or a log line
        self._secrets = tuple(s for s in (config.secret, self._url.password) if s)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def body(self, notice: Notice, message: str) -> bytes:
        """The exact bytes POSTed (and signed) for a notice."""
        payload: dict[str, Any] = {**notice.payload_fields(), "message": message}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def headers(self, notice: Notice, body: bytes) -> CIMultiDict[str]:
        """The request headers for ``body``; signs it when a secret is configured."""
        headers: CIMultiDict[str] = CIMultiDict({"User-Agent": USER_AGENT})
        headers.update(self._extra_headers)
        headers["Content-Type"] = "application/json"
        if self._key is not None:
            timestamp = int(self._clock())
            headers["webhook-id"] = notice.id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(self._key, notice.id, timestamp, body)
        return headers

    async def send(self, notice: Notice, message: str) -> None:
        if self._session is None or self._session.closed:
            await self.open()
        assert self._session is not None
        body = self.body(notice, message)
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=self.headers(notice, body),
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                status = response.status
                if 200 <= status <= 299:
                    return
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                snippet = await self._read_snippet(response)
        except aiohttp.InvalidURL as exc:
            raise PermanentDeliveryError(self._describe_exception(exc)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TemporaryDeliveryError(self._describe_exception(exc)) from None

        text = f"webhook {self.name}: HTTP {status}"
        if snippet:
            text += f": {snippet}"
        if is_temporary_status(status):
            raise TemporaryDeliveryError(text, retry_after=retry_after, status=status)
        raise PermanentDeliveryError(text, status=status)

    async def _read_snippet(self, response: aiohttp.ClientResponse) -> str:
        """The start of an error response's body, on one line, at most ERROR_BODY_CHARS long."""
        chunks: list[bytes] = []
        size = 0
        try:
            while size < _ERROR_BODY_READ_BYTES:
                chunk = await response.content.read(_ERROR_BODY_READ_BYTES - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError):
            # the status already tells what happened; a body cut short is no reason to hide it
            pass
        raw = b"".join(chunks)
        try:
            text = raw.decode(response.charset or "utf-8", "replace")
        except LookupError:
            text = raw.decode("utf-8", "replace")
        text = " ".join(_redact(text, self._secrets).split())
        if len(text) > ERROR_BODY_CHARS:
            text = text[: ERROR_BODY_CHARS - 1] + "…"
        return text

    def _describe_exception(self, exc: BaseException) -> str:
        detail = str(exc)
        if not detail and isinstance(exc, TimeoutError):
            detail = f"no response within {self._timeout.total:g}s"
        text = f"webhook {self.name}: {type(exc).__name__}"
        if detail:
            text += f": {detail}"
        return _redact(text, self._secrets)
