"""Delivery of the short text to a phone number through an HTTP SMS gateway."""

from __future__ import annotations

import json
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ...config import SmsChannelConfig
from ...model import Notice, Recipient
from ..render import RenderedMessage
from .errors import PermanentDeliveryError
from .http import USER_AGENT, HttpChannel, deliver, header_pair


def fill(templates: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """Each body template with its ``{phone}``, ``{text}``, ``{id}``, ``{login}`` filled.

    The config check allows only those names, so ``format_map`` cannot reach anything else.
    """
    return {key: template.format_map(values) for key, template in templates.items()}


class SmsChannel(HttpChannel):
    """Calls the gateway once per notice; its HTTP status says delivered, retry or give up."""

    recipient_kind = "phone"

    def __init__(self, config: SmsChannelConfig) -> None:
        self.name = config.name or config.type
        self._config = config
        self._url = URL(config.url)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        headers: CIMultiDict[str] = CIMultiDict({"User-Agent": USER_AGENT})
        headers.update(config.headers)
        secrets: list[str] = []
        if config.auth_header:
            name, value = header_pair(config.auth_header)
            headers[name] = value
            secrets.append(value)
        if self._url.password:
            secrets.append(self._url.password)
        if (self._url.user is not None or self._url.password is not None) and (
            "Authorization" in headers
        ):
            # aiohttp refuses every request that has both; say so at startup, not per notice
            raise ValueError(
                f"sms {self.name}: credentials in url and an Authorization header; use one"
            )
        self._headers = headers
        self._secrets = tuple(s for s in secrets if s)

    def request(
        self, notice: Notice, message: RenderedMessage, phone: str
    ) -> tuple[CIMultiDict[str], bytes | None, dict[str, str] | None]:
        """Headers, body and query parameters of the gateway call for one notice."""
        fields = fill(
            self._config.body,
            {"phone": phone, "text": message.short.strip(), "id": notice.id, "login": notice.login},
        )
        headers = CIMultiDict(self._headers)
        if self._config.method == "GET":
            return headers, None, fields
        if self._config.body_format == "json":
            headers["Content-Type"] = "application/json"
            return headers, json.dumps(fields, ensure_ascii=False).encode("utf-8"), None
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        # the encoded form: query_string would be the decoded one, not ASCII for Japanese text
        return headers, URL.build(query=fields).raw_query_string.encode("ascii"), None

    async def send(
        self, notice: Notice, message: RenderedMessage, recipient: Recipient | None = None
    ) -> None:
        if recipient is None or not recipient.address:
            raise PermanentDeliveryError(f"sms {self.name}: no phone number")
        session = await self._ready_session()
        headers, data, params = self.request(notice, message, recipient.address)
        await deliver(
            session,
            f"sms {self.name}",
            self._config.method,
            self._url,
            data=data,
            params=params,
            headers=headers,
            client_timeout=self._timeout,
            secrets=self._secrets,
        )
