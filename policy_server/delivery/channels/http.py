"""What the HTTP channels (webhook, SMS gateway) share: one request, its outcome classified."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from ... import __version__
from .base import Channel
from .errors import PermanentDeliveryError, TemporaryDeliveryError

USER_AGENT = f"policy-server/{__version__}"

# A peer asking for a longer pause would stall a notice well past the point where it is useful;
# the worker's own backoff takes over from there.
MAX_RETRY_AFTER_S = 3600.0

# Enough of an error body to show what the peer complained about, not enough to flood the log.
ERROR_BODY_CHARS = 200
_ERROR_BODY_READ_BYTES = 4 * ERROR_BODY_CHARS

_TEMPORARY_STATUSES = frozenset({408, 429})


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


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


async def read_snippet(response: aiohttp.ClientResponse, secrets: tuple[str, ...]) -> str:
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
    text = " ".join(redact(text, secrets).split())
    if len(text) > ERROR_BODY_CHARS:
        text = text[: ERROR_BODY_CHARS - 1] + "…"
    return text


def describe_exception(
    label: str, exc: BaseException, timeout: float, secrets: tuple[str, ...]
) -> str:
    detail = str(exc)
    if not detail and isinstance(exc, TimeoutError):
        detail = f"no response within {timeout:g}s"
    text = f"{label}: {type(exc).__name__}"
    if detail:
        text += f": {detail}"
    return redact(text, secrets)


async def deliver(
    session: aiohttp.ClientSession,
    label: str,
    method: str,
    url: URL,
    *,
    headers: Mapping[str, str],
    client_timeout: aiohttp.ClientTimeout,
    secrets: tuple[str, ...],
    data: bytes | None = None,
    params: Mapping[str, str] | None = None,
) -> None:
    """Send one request; return on 2xx, raise a DeliveryError saying whether to retry.

    2xx is delivered; 408, 429 and 5xx are temporary (honouring ``Retry-After``); every other
    status, redirects included, is permanent. Network errors and timeouts are temporary.
    """
    try:
        async with session.request(
            method,
            url,
            data=data,
            params=params,
            headers=headers,
            allow_redirects=False,
            timeout=client_timeout,
        ) as response:
            status = response.status
            if 200 <= status <= 299:
                return
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            snippet = await read_snippet(response, secrets)
    except aiohttp.InvalidURL as exc:
        raise PermanentDeliveryError(
            describe_exception(label, exc, client_timeout.total or 0, secrets)
        ) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise TemporaryDeliveryError(
            describe_exception(label, exc, client_timeout.total or 0, secrets)
        ) from None

    text = f"{label}: HTTP {status}"
    if snippet:
        text += f": {snippet}"
    if is_temporary_status(status):
        raise TemporaryDeliveryError(text, retry_after=retry_after, status=status)
    raise PermanentDeliveryError(text, status=status)


def header_pair(value: str) -> tuple[str, str]:
    """``"Name: value"`` -> ("Name", "value"); a bare value is an ``Authorization`` header."""
    name, sep, rest = value.partition(":")
    if sep and name.strip() and " " not in name.strip():
        return name.strip(), rest.strip()
    return "Authorization", value.strip()


class HttpChannel(Channel):
    """A channel that posts through one aiohttp session, opened with the worker."""

    _timeout: aiohttp.ClientTimeout
    _session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _ready_session(self) -> aiohttp.ClientSession:
        """The session, opened now if the worker has not opened it yet."""
        if self._session is None or self._session.closed:
            await self.open()
        assert self._session is not None
        return self._session
