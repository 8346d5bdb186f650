"""Delivery by HTTP POST of a JSON object, signed in the Standard Webhooks scheme."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ... import jsonfast
from ...config import WebhookChannelConfig
from ...model import Notice, Recipient
from ...web.tokens import NoticeLinks
from ..render import RenderedMessage
from .http import MAX_RETRY_AFTER_S, USER_AGENT, HttpChannel, deliver, parse_retry_after
from .signing import secret_key, sign

__all__ = ["MAX_RETRY_AFTER_S", "WebhookChannel", "parse_retry_after"]

# Headers that carry the body's framing or its signature: an admin's [channels.headers] must not
# be able to break either.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
)

# what "earlier" says of each notice folded into a delivery, in the form of the payload's own
EARLIER_FIELDS = ("id", "time", "remote", "country", "asn", "reasons", "protocols")


def earlier(folded: Sequence[Notice]) -> list[dict[str, Any]]:
    """The payload's ``earlier``: the notices folded into this one, as they were given."""
    return [
        {key: fields[key] for key in EARLIER_FIELDS}
        for fields in (notice.payload_fields() for notice in folded)
    ]


class WebhookChannel(HttpChannel):
    """POSTs ``notice.payload_fields()`` plus ``earlier`` (the notices folded into it, oldest
    first; ``[]`` when none), ``links`` (the owner's "It was me" / "It wasn't me" URLs,
    ``{"confirm": ..., "deny": ...}``, or null when ``[web]`` has none) and ``message`` (the
    rendered body) as JSON.

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

    def body(
        self,
        notice: Notice,
        message: str,
        folded: Sequence[Notice] = (),
        links: NoticeLinks | None = None,
    ) -> bytes:
        """The exact bytes POSTed (and signed) for a notice with ``folded`` ones in it."""
        payload: dict[str, Any] = {
            **notice.payload_fields(),
            "earlier": earlier(folded),
            "links": {"confirm": links.confirm, "deny": links.deny} if links else None,
            "message": message,
        }
        return jsonfast.dumps(payload)

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

    async def send(
        self, notice: Notice, message: RenderedMessage, recipient: Recipient | None = None
    ) -> None:
        session = await self._ready_session()
        body = self.body(notice, message.body, message.folded, message.links)
        await deliver(
            session,
            f"webhook {self.name}",
            "POST",
            self._url,
            data=body,
            headers=self.headers(notice, body),
            client_timeout=self._timeout,
            secrets=self._secrets,
        )
