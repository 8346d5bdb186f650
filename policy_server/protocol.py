"""Dovecot's auth-policy wire format: a request body becomes a LoginEvent; nothing else here.

What real Dovecot sends, and this module accepts:

* every configured attribute is a JSON string (``"rport":"5555"``); only ``success``,
  ``policy_reject`` and ``tls``, which Dovecot appends itself, are booleans;
* a ``/`` in an attribute name nests one level (``"extra":{"service":"imap"}``);
* a user attribute named ``tls`` gives the key twice; the last one, Dovecot's boolean, wins;
* two or more ``/`` in one attribute name make Dovecot 2.3 emit invalid JSON: the request is
  refused with an error that says so, so the admin can fix the attribute list;
* Dovecot 2.4 writes valid JSON for such a name, but nests every attribute that sorts after it
  inside that group (``{"a":{"b":{…},"login":…,"remote":…},"success":…}``): the attributes the
  service knows are found inside the group, and the event says so, for the log;
* Dovecot 2.4 also sends ``fail_type`` (why a login failed) in its default list, and both
  releases send ``session_id`` and ``device_id`` (the mail program's IMAP ID).
"""

from __future__ import annotations

import re
from typing import Any, Final

from . import jsonfast
from .model import Command, LoginEvent
from .origin.address import is_address

ALLOW_ANSWER: Final = b'{"status":0,"msg":""}'
REPORT_ANSWER: Final = b'{"status":0,"msg":""}'

# Keys never kept on an event: pwhash is a (weak) password digest and must not reach storage.
_DROPPED: Final = frozenset({"pwhash"})
# The string attributes the service reads; the booleans Dovecot appends itself.
_ATTRIBUTES: Final = ("login", "remote", "protocol", "session_id", "device_id", "fail_type")
_KNOWN: Final = frozenset({*_ATTRIBUTES, "success", "policy_reject", "tls"})
_COMMANDS: Final = {command.value: command for command in Command}
# How deep a group is searched for attributes Dovecot 2.4 nested in it.
_MAX_GROUP_DEPTH: Final = 8
NESTED_GROUP_REPAIR: Final = (
    "attributes were nested inside a group: an auth_policy_request_attributes key has more"
    " than one '/', and Dovecot 2.4 then nests every later attribute inside that group;"
    " use at most one '/' per key (e.g. attrs/name = ...)"
)
_NESTED_KEY = re.compile(rb'"[^"\\]{0,200}/[^"\\]{0,200}"\s*:')


class ProtocolError(ValueError):
    """A request the service refuses. ``code`` is a short machine-readable name."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status

    def as_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


def parse_command(value: str | None) -> Command:
    if value is None or value == "":
        raise ProtocolError("missing_command", "the query has no command= parameter")
    try:
        return _COMMANDS[value]
    except KeyError:
        raise ProtocolError(
            "unknown_command", f"unknown command {value[:32]!r}; expected allow or report"
        ) from None


def _decode(body: bytes) -> dict[str, Any]:
    if not body:
        raise ProtocolError("empty_body", "the request body is empty; expected a JSON object")
    try:
        data = jsonfast.loads(body)
    except jsonfast.JSONDecodeError as exc:
        # said after the fact: the common body pays for one pass over it, not two
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise ProtocolError(
                "invalid_utf8", f"the body is not UTF-8 (byte {bad.start})"
            ) from None
        hint = ""
        if _NESTED_KEY.search(body):
            hint = (
                " (Dovecot 2.3 sends invalid JSON when an auth_policy_request_attributes key"
                " has more than one '/': use at most one level, e.g. attrs/name=...)"
            )
        raise ProtocolError(
            "invalid_json",
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}",
        ) from None
    except RecursionError:
        raise ProtocolError("invalid_json", "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError(
            "not_an_object", f"the body is a JSON {type(data).__name__}, expected an object"
        )
    return data


def _find_in_groups(data: dict[str, Any], key: str, depth: int = 0) -> str | None:
    """The string ``key`` inside the nested groups of ``data``, depth first, or None."""
    if depth >= _MAX_GROUP_DEPTH:
        return None
    for value in data.values():
        if isinstance(value, dict):
            found = value.get(key)
            if isinstance(found, str):
                return found
            found = _find_in_groups(value, key, depth + 1)
            if found is not None:
                return found
    return None


def _lift_nested(data: dict[str, Any]) -> bool:
    """Bring the attributes Dovecot 2.4 nested in a group back to the top; True if any was."""
    if not any(isinstance(value, dict) for value in data.values()):
        return False  # no group to look in (the common body)
    lifted = False
    for key in _ATTRIBUTES:
        if key in data:
            continue
        found = _find_in_groups(data, key)
        if found is not None:
            data[key] = found
            lifted = True
    return lifted


def _without_secrets(value: Any) -> Any:
    """``value`` with every ``pwhash``, at any depth, left out."""
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if k not in _DROPPED}
    return value


def _string(data: dict[str, Any], key: str, *, required: bool) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"missing_{key}", f"the body has no {key!r} attribute")
        return ""
    if not isinstance(value, str):
        raise ProtocolError("wrong_type", f"{key!r} must be a string, got {_json_type(value)}")
    return value


def _flag(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    # Dovecot appends these as JSON booleans; accept the string forms an admin might template.
    if value in ("true", "false"):
        return str(value) == "true"
    raise ProtocolError("wrong_type", f"{key!r} must be a boolean, got {_json_type(value)}")


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "null"


def parse_request(command: str | None, body: bytes) -> LoginEvent:
    """Turn one request into a LoginEvent, or raise ProtocolError saying what is wrong.

    The error text never repeats attribute values: a body may carry a password digest.
    """
    cmd = parse_command(command)
    data = _decode(body)
    repairs = (NESTED_GROUP_REPAIR,) if _lift_nested(data) else ()
    login = _string(data, "login", required=True)
    if not login.strip():
        raise ProtocolError("missing_login", "'login' is empty")
    remote = _string(data, "remote", required=True)
    if not is_address(remote):
        raise ProtocolError(
            "invalid_remote", "'remote' is not an IP address (is %{rip} in the attributes?)"
        )
    success = _flag(data, "success")
    if cmd is Command.REPORT and success is None:
        raise ProtocolError("missing_success", "a report needs the boolean 'success'")
    return LoginEvent(
        command=cmd,
        login=login,
        remote=remote,
        protocol=_string(data, "protocol", required=False),
        success=success,
        policy_reject=_flag(data, "policy_reject"),
        tls=_flag(data, "tls"),
        session_id=_string(data, "session_id", required=False),
        device_id=_string(data, "device_id", required=False),
        fail_type=_string(data, "fail_type", required=False),
        attributes={
            k: _without_secrets(v) for k, v in data.items() if k not in _KNOWN and k not in _DROPPED
        },
        repairs=repairs,
    )
