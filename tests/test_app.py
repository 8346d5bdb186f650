"""The HTTP API as Dovecot uses it, through a real aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support import Sink

from policy_server.config import Config
from policy_server.service import keys
from policy_server.service.app import create_app

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

REPORT_OK = {
    "login": "alice",
    "remote": "203.0.113.7",
    "protocol": "imap",
    "success": True,
    "policy_reject": False,
    "tls": False,
}
ALLOW_BODY = {"login": "alice", "remote": "203.0.113.7", "protocol": "imap", "tls": False}


@pytest.fixture
async def service(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> Callable[..., Awaitable[Client]]:
    async def start(**sections: Any) -> Client:
        sections.setdefault("channels", [{"type": "webhook", "url": sink.url}])
        client: Client = await aiohttp_client(create_app(make_config(**sections)))
        return client

    return start


def db_rows(client: Client, sql: str) -> list[tuple[Any, ...]]:
    path = client.app[keys.CONFIG].storage.path
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql).fetchall()


async def post(client: Client, command: str, body: object, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(f"/?command={command}", data=data, **kw)
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


async def test_allow_answers_status_zero(service: Any) -> None:
    client = await service()
    resp = await client.post("/?command=allow", data=json.dumps(ALLOW_BODY))
    assert resp.status == 200
    assert await resp.read() == b'{"status":0,"msg":""}'
    assert resp.content_type == "application/json"
    assert db_rows(client, "SELECT count(*) FROM accounts") == [(0,)]


async def test_both_url_forms(service: Any) -> None:
    client = await service()
    for target in ("/?command=allow", "/policy?tenant=t1&command=allow", "/x?a=b&command=report"):
        body = REPORT_OK if target.endswith("report") else ALLOW_BODY
        resp = await client.post(target, data=json.dumps(body))
        assert resp.status == 200, target
        assert await resp.json() == {"status": 0, "msg": ""}


async def test_report_records_history_and_queues_notice(service: Any, sink: Sink) -> None:
    client = await service()
    status, answer = await post(client, "report", REPORT_OK)
    assert (status, answer) == (200, {"status": 0, "msg": ""})
    # answered after the commit: the rows are there now
    assert db_rows(client, "SELECT account, country, provider FROM origins") == [
        ("alice", "JP", "AS64500")
    ]
    assert db_rows(client, "SELECT count(*) FROM notices") == [(1,)]
    delivered = (await sink.wait_for(1))[0]
    assert delivered["login"] == "alice" and delivered["reasons"] == ["first_use"]


async def test_failed_login_never_makes_an_origin_known(service: Any, sink: Sink) -> None:
    client = await service()
    await post(client, "report", {**REPORT_OK, "success": False})
    assert db_rows(client, "SELECT count(*) FROM origins") == [(0,)]
    await post(client, "report", REPORT_OK)
    await post(client, "report", {**REPORT_OK, "remote": "192.0.2.1", "success": False})
    assert db_rows(client, "SELECT prefix FROM origins") == [("203.0.113.0/24",)]
    assert db_rows(client, "SELECT failures FROM accounts") == [(1,)]
    assert db_rows(client, "SELECT count(*) FROM notices") == [(1,)]


async def test_login_is_normalised(service: Any) -> None:
    client = await service()
    await post(client, "report", {**REPORT_OK, "login": " Alice "})
    await post(client, "report", {**REPORT_OK, "login": "ALICE", "remote": "192.0.2.1"})
    assert db_rows(client, "SELECT DISTINCT account FROM origins") == [("alice",)]


@pytest.mark.parametrize(
    ("setting", "headers", "expected"),
    [
        ("X-API-Key: secret", {"X-API-Key": "secret"}, 200),
        ("X-API-Key: secret", {"X-API-Key": "wrong"}, 401),
        ("X-API-Key: secret", {}, 401),
        ("secret", {"X-API-Key": "secret"}, 200),
        ("Authorization: Bearer t0k", {"Authorization": "Bearer t0k"}, 200),
        ("Authorization: Bearer t0k", {"Authorization": "Bearer t0"}, 401),
    ],
)
async def test_api_header(
    service: Any, setting: str, headers: dict[str, str], expected: int
) -> None:
    client = await service(server={"api_header": setting})
    status, answer = await post(client, "report", REPORT_OK, headers=headers)
    assert status == expected
    if expected == 401:
        assert answer["error"] == "unauthorized"
        assert db_rows(client, "SELECT count(*) FROM accounts") == [(0,)]
    status, _ = await post(client, "allow", ALLOW_BODY, headers=headers)
    assert status == expected


async def test_basic_auth_from_url_user_info(service: Any) -> None:
    client = await service(server={"basic_auth": "dovecot:s3cret"})
    good = "Basic " + base64.b64encode(b"dovecot:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"dovecot:guess").decode()
    assert (await post(client, "allow", ALLOW_BODY, headers={"Authorization": good}))[0] == 200
    assert (await post(client, "allow", ALLOW_BODY, headers={"Authorization": bad}))[0] == 401
    assert (await post(client, "allow", ALLOW_BODY))[0] == 401


@pytest.mark.parametrize(
    ("command", "body", "status", "code"),
    [
        ("report", b"this is not json", 400, "invalid_json"),
        ("report", b"[1,2]", 400, "not_an_object"),
        ("report", b'{"login":7,"remote":"203.0.113.7","success":true}', 400, "wrong_type"),
        ("report", b'{"remote":"203.0.113.7","success":true}', 400, "missing_login"),
        ("report", b'{"login":"alice","success":true}', 400, "missing_remote"),
        ("report", b'{"login":"alice","remote":"999.1.1.1","success":true}', 400, "invalid_remote"),
        ("report", b'{"login":"alice","remote":"203.0.113.7"}', 400, "missing_success"),
        ("frobnicate", json.dumps(REPORT_OK).encode(), 400, "unknown_command"),
        ("report", b"\xc3\x28", 400, "invalid_utf8"),
    ],
)
async def test_bad_input_is_refused_clearly_and_changes_nothing(
    service: Any,
    caplog: pytest.LogCaptureFixture,
    command: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    client = await service()
    caplog.set_level(logging.WARNING, logger="policy_server.http")
    got, answer = await post(client, command, body)
    assert got == status
    assert answer["error"] == code and answer["detail"]
    assert db_rows(client, "SELECT count(*) FROM accounts") == [(0,)]
    refused = [r for r in caplog.records if "refused request" in r.getMessage()]
    assert len(refused) == 1 and code in refused[0].getMessage()
    # the process is still serving
    assert (await post(client, "allow", ALLOW_BODY))[0] == 200


async def test_secrets_never_logged(service: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = await service(server={"api_header": "X-API-Key: topsecret"})
    caplog.set_level(logging.DEBUG)
    body = {**REPORT_OK, "pwhash": "0f3b", "remote": "nonsense"}
    await post(client, "report", body, headers={"X-API-Key": "topsecret"})
    await post(client, "report", REPORT_OK, headers={"X-API-Key": "wrongsecret"})
    text = caplog.text
    assert "0f3b" not in text and "topsecret" not in text and "wrongsecret" not in text


async def test_body_over_limit(service: Any) -> None:
    client = await service(server={"max_body_bytes": 1024})
    big = json.dumps({**REPORT_OK, "pad": "x" * 2000}).encode()
    status, answer = await post(client, "report", big)
    assert status == 413 and answer["error"] == "body_too_large"
    assert db_rows(client, "SELECT count(*) FROM accounts") == [(0,)]


async def test_default_body_limit_is_64k(service: Any) -> None:
    client = await service()
    assert client.app[keys.CONFIG].server.max_body_bytes == 65536
    status, _ = await post(client, "report", json.dumps({**REPORT_OK, "p": "x" * 70000}).encode())
    assert status == 413
    status, _ = await post(client, "report", json.dumps({**REPORT_OK, "p": "x" * 60000}).encode())
    assert status == 200


async def test_other_methods(service: Any) -> None:
    client = await service()
    for method in ("GET", "PUT", "DELETE"):
        resp = await client.request(method, "/?command=allow")
        assert resp.status == 405
        assert (await resp.json())["error"] == "method_not_allowed"
        assert resp.headers["Allow"] == "POST"


async def test_fail_open_when_store_is_locked(service: Any) -> None:
    client = await service(server={"request_budget_ms": 200}, storage={"busy_timeout_ms": 3000})
    blocker = sqlite3.connect(
        client.app[keys.CONFIG].storage.path, isolation_level=None, check_same_thread=False
    )
    try:
        # in a thread: the service's own transactions need the event loop to finish
        await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
        started = time.monotonic()
        status, answer = await post(client, "report", REPORT_OK)
        elapsed = time.monotonic() - started
        assert (status, answer) == (200, {"status": 0, "msg": ""})
        assert elapsed < 1.5  # the budget, not the 3 s lock wait, bounds the answer
        assert client.app[keys.STATS].fail_open == 1
    finally:
        await asyncio.to_thread(blocker.execute, "ROLLBACK")
        blocker.close()
    # once the lock is gone the service records again by itself
    await post(client, "report", {**REPORT_OK, "login": "bob"})
    assert ("bob",) in db_rows(client, "SELECT account FROM accounts")


async def test_fail_open_on_internal_error(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await service()
    recorder = client.app[keys.RECORDER]

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    def broken_now(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom on the loop")

    # a failure while recording (waiting on the store) ...
    monkeypatch.setattr(recorder, "finish", broken)
    status, answer = await post(client, "report", REPORT_OK)
    assert (status, answer) == (200, {"status": 0, "msg": ""})
    assert client.app[keys.STATS].fail_open == 1
    # ... and one before any waiting
    monkeypatch.setattr(recorder, "begin", broken_now)
    status, answer = await post(client, "report", REPORT_OK)
    assert (status, answer) == (200, {"status": 0, "msg": ""})
    assert client.app[keys.STATS].fail_open == 2


async def test_fail_open_when_store_file_is_gone(service: Any, tmp_path: Path) -> None:
    client = await service(server={"request_budget_ms": 300})
    store = client.app[keys.STORE]
    await store.close()  # as if the database became unreachable
    status, answer = await post(client, "report", REPORT_OK)
    assert (status, answer) == (200, {"status": 0, "msg": ""})
    assert (await post(client, "allow", ALLOW_BODY))[0] == 200


async def test_concurrent_reports_of_one_account_notify_once(service: Any, sink: Sink) -> None:
    client = await service()
    await asyncio.gather(*(post(client, "report", REPORT_OK) for _ in range(20)))
    assert db_rows(client, "SELECT count(*) FROM notices") == [(1,)]


async def test_dovecot24_nested_attributes_are_recorded_and_the_cause_logged(
    service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Dovecot 2.4 with an attribute key a/b/c: everything after it is nested in group "a"
    body = (
        b'{"a":{"b":{"c":"1"},"login":"alice","protocol":"imap","remote":"203.0.113.7"},'
        b'"success":true,"policy_reject":false,"tls":false}'
    )
    caplog.set_level(logging.WARNING, logger="policy_server.http")
    client = await service()
    assert await post(client, "report", body) == (200, {"status": 0, "msg": ""})
    assert db_rows(client, "SELECT account, count FROM origins") == [("alice", 1)]
    (line,) = [r.getMessage() for r in caplog.records if "nested inside a group" in r.getMessage()]
    assert "more than one '/'" in line
