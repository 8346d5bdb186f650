"""Who may call the policy endpoint: Dovecot's api header, or Basic auth from its URL."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping

from ..config import ServerConfig


def parse_api_header(setting: str) -> tuple[str, str]:
    """Read the setting as Dovecot does: ``Name: value``, or a bare value sent as X-API-Key."""
    name, sep, value = setting.partition(":")
    if not sep:
        return "X-API-Key", setting.strip()
    return name.strip(), value.strip()


class Authenticator:
    """Checks a request's headers in constant time; open when nothing is configured."""

    def __init__(self, config: ServerConfig) -> None:
        self._expected: list[tuple[str, bytes]] = []
        if config.api_header:
            name, value = parse_api_header(config.api_header)
            self._expected.append((name, value.encode()))
        if config.basic_auth:
            token = base64.b64encode(config.basic_auth.encode()).decode()
            self._expected.append(("Authorization", f"Basic {token}".encode()))

    @property
    def enabled(self) -> bool:
        return bool(self._expected)

    def allows(self, headers: Mapping[str, str]) -> bool:
        if not self._expected:
            return True
        ok = False
        # Compare every configured credential, so the time taken does not say which one failed.
        for name, expected in self._expected:
            given = headers.get(name, "").strip().encode()
            ok |= hmac.compare_digest(given, expected)
        return ok
