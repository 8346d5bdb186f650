"""Running it like the rest of the mail stack: systemd notify, reload, shutdown, JSON logs."""

from __future__ import annotations

import configparser
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support import Sink, free_port
from test_delivery import report

from policy_server.config import Config
from policy_server.logs import JsonLines
from policy_server.service import keys
from policy_server.service.app import create_app, reload, reload_templates

Client = TestClient[web.Request, web.Application]
ROOT = Path(__file__).resolve().parent.parent


def receive(sock: socket.socket, want: str, timeout: float = 20.0) -> list[str]:
    """Datagrams until one holds ``want``."""
    sock.settimeout(timeout)
    seen: list[str] = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if want in message.split("\n"):
            return seen


@pytest.mark.slow
def test_systemd_is_told_ready_reloading_and_stopping(
    tmp_path: Path, geo_files: dict[str, Path]
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    port = free_port()
    config = tmp_path / "policy.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[geoip]\ncountry_db = "{geo_files["country_mmdb"]}"\nbundled = false\n'
        f'[storage]\npath = "{tmp_path / "s.sqlite3"}"\n[metrics]\nenabled = false\n',
        encoding="utf-8",
    )
    log = (tmp_path / "service.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "policy_server", "serve", "-c", str(config)],
        stdout=log,
        stderr=log,
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
    )
    try:
        ready = receive(sock, "READY=1")
        assert any(f"STATUS=answering on 127.0.0.1:{port}" in m for m in ready)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # READY came after the listener was up
        proc.send_signal(signal.SIGHUP)
        reloading = receive(sock, "READY=1")
        assert "RELOADING=1" in reloading[0].split("\n")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading[0].split("\n"))
        proc.send_signal(signal.SIGTERM)
        receive(sock, "STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        sock.close()


def test_the_unit_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "conf" / "policy-server.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "serve -c " in service["ExecStart"]
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert service[key] in ("yes", "strict"), key
    assert service["CapabilityBoundingSet"] == ""


async def test_shutdown_puts_deliveries_in_flight_back_in_the_queue(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink
) -> None:
    sink.delay = 30.0  # the receiver hangs
    config = make_config(
        queue={"stop_timeout_s": 0.3}, channels=[{"type": "webhook", "url": sink.url}]
    )
    client: Client = await aiohttp_client(create_app(config))
    await client.post("/?command=report", data=report())
    await sink.wait_for(1)  # the delivery is in flight
    await client.close()
    with contextlib.closing(sqlite3.connect(config.storage.path)) as conn, conn:
        rows = conn.execute("SELECT status, attempts, claimed_by FROM deliveries").fetchall()
    assert rows == [("queued", 0, None)]


async def test_templates_reload_and_a_broken_one_is_refused(
    aiohttp_client: Any,
    make_config: Callable[..., Config],
    sink: Sink,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    templates = tmp_path / "templates"
    (templates / "en").mkdir(parents=True)
    notice = templates / "en" / "notice.txt"
    notice.write_text("first wording for {{ login }}\n", encoding="utf-8")
    config = make_config(
        message={"language": "en", "templates_dir": str(templates)},
        channels=[{"type": "webhook", "url": sink.url}],
    )
    client: Client = await aiohttp_client(create_app(config))
    await client.post("/?command=report", data=report(login="a"))
    assert (await sink.wait_for(1))[0]["message"] == "first wording for a\n"

    notice.write_text("second wording for {{ login }}\n", encoding="utf-8")
    assert reload_templates(client.app) is True
    await client.post("/?command=report", data=report(login="b"))
    assert (await sink.wait_for(2))[1]["message"] == "second wording for b\n"

    notice.write_text("{{ no_such_thing }}\n", encoding="utf-8")
    assert reload_templates(client.app) is False
    assert any("templates not reloaded" in r.message for r in caplog.records)
    await client.post("/?command=report", data=report(login="c"))
    assert (await sink.wait_for(3))[2]["message"] == "second wording for c\n"
    assert client.app[keys.WORKER] is not None


def test_json_log_lines() -> None:
    formatter = JsonLines()
    record = logging.LogRecord(
        "policy_server.http", logging.WARNING, __file__, 1, "refused %s", ("a\nb",), None
    )
    line = formatter.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["level"], data["logger"], data["message"]) == (
        "warning",
        "policy_server.http",
        "refused a\nb",
    )
    assert data["time"].endswith("+00:00")
    with pytest.raises(ZeroDivisionError):
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            record.exc_info = sys.exc_info()
            assert "ZeroDivisionError" in json.loads(formatter.format(record))["exception"]
            raise


async def test_sighup_reopens_the_events_file_after_logrotate(
    aiohttp_client: Any, make_config: Callable[..., Config], sink: Sink, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    config = make_config(
        privacy={"events_path": str(events)}, channels=[{"type": "webhook", "url": sink.url}]
    )
    client: Client = await aiohttp_client(create_app(config))
    await client.post("/?command=report", data=report(login="a"))
    rotated = tmp_path / "events.jsonl.1"
    events.rename(rotated)  # what logrotate does before it sends SIGHUP
    reload(client.app)
    await client.post("/?command=report", data=report(login="b"))
    # the file is written by a thread of its own: wait until what was queued is written
    assert client.app[keys.RECORDER].events.flush()
    assert [json.loads(line)["login"] for line in rotated.read_text().splitlines()] == ["a"]
    assert [json.loads(line)["login"] for line in events.read_text().splitlines()] == ["b"]
