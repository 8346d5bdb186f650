"""The mail program behind a login, from the IMAP ID that Dovecot passes on as ``device_id``.

Dovecot sends the ID's field list as IMAP writes it (2.3: ``%{client_id}`` with
``imap_id_retain = yes``; 2.4: ``device_id``), without the ``x-*`` fields, e.g.
``"name" "Thunderbird" "version" "128.3.0"`` or ``"name" "iPhone Mail" "version" "21A329" "os"
"iOS" "os-version" "17.0 (21A329)"``: quoted strings (``\\"`` and ``\\\\`` escaped), ``NIL``, or
bare atoms, in pairs. Programs write what they like there, so everything is optional and
bounded, and text that is no such list gives no program rather than an error.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

#: what is kept of a field's value, and of the whole ID text read
MAX_VALUE = 64
MAX_TEXT = 1024

_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"()]+))')
_LEADING_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class Client:
    """A mail program as its IMAP ID names it; ``version`` and ``os`` are "" when not sent."""

    name: str
    version: str = ""
    os: str = ""

    @property
    def label(self) -> str:
        """How a notice names it: the name with the major version when the version starts
        with one ("Thunderbird 128"), the name alone otherwise ("iPhone Mail", whose version
        is a build number)."""
        major = _major(self.version)
        return f"{self.name} {major}" if major else self.name

    def payload(self) -> dict[str, Any]:
        """The webhook payload's ``client``."""
        return {"name": self.name, "version": self.version or None}

    @classmethod
    def from_payload(cls, data: Any) -> Client | None:
        """The inverse of ``payload`` (``os`` is not carried); None for anything else."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        version = data.get("version")
        return cls(data["name"], version if isinstance(version, str) else "")


def _major(version: str) -> str:
    """The leading number of a dotted version ("128" of "128.3.0", "16" of "16.0 (3731)"),
    "" for build numbers such as Apple's "21A329" or anything else."""
    match = _LEADING_NUMBER.match(version)
    if match is None:
        return ""
    rest = version[match.end() :]
    if rest and rest[0] not in ". -":
        return ""
    return match.group(0)


def _clean(value: str) -> str:
    """A value as shown: unescaped, control characters out, spaces collapsed, bounded."""
    text = re.sub(r"\\(.)", r"\1", value)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:MAX_VALUE]


# mail programs send the same few IDs again and again
@functools.lru_cache(maxsize=4096)
def parse_client_id(text: str) -> Client | None:
    """The program an IMAP ID field list names; None when it names none (no ``name``, an
    empty list, or text that is no such list)."""
    text = text.strip()[:MAX_TEXT].rstrip()
    if text.startswith("(") and text.endswith(")"):  # the ID command's own parentheses
        text = text[1:-1].rstrip()
    values: list[str | None] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            return None
        quoted, atom = match.groups()
        if quoted is not None:
            values.append(_clean(quoted))
        else:
            values.append(None if atom.upper() == "NIL" else _clean(atom))
        position = match.end()
    fields: dict[str, str] = {}
    for key, value in zip(values[::2], values[1::2], strict=False):
        if key and value and key.lower() not in fields:
            fields[key.lower()] = value
    name = fields.get("name")
    if not name:
        return None
    return Client(name, fields.get("version", ""), fields.get("os", ""))
