"""JSON for the hot paths: orjson where it is installed (a default dependency), else ``json``.

Both give the same values for what the service reads and writes (objects, strings, numbers,
booleans); ``dumps`` gives compact UTF-8 bytes either way, and a decoding error is a
``json.JSONDecodeError`` (orjson's is a subclass) with ``msg``, ``lineno`` and ``colno``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["BACKEND", "JSONDecodeError", "dumps", "dumps_text", "loads"]

JSONDecodeError = json.JSONDecodeError

loads: Callable[[bytes | str], Any]
dumps: Callable[[Any], bytes]

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a default dependency
    BACKEND = "json"

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    def dumps(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

else:
    BACKEND = "orjson"
    loads = orjson.loads
    dumps = orjson.dumps


def dumps_text(value: Any) -> str:
    """``dumps`` as text, for a TEXT column."""
    return dumps(value).decode("utf-8")
