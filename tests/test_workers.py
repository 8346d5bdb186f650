"""``serve --workers N``: several processes on one port and one store, no notice lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from support import Sink, free_port, service_config
from test_restart import Service
from test_supervisor import NotifySocket, children

pytestmark = pytest.mark.slow


class Workers(Service):
    """``serve --workers 2``; ready once its supervisor tells (its NOTIFY_SOCKET) that both
    processes listen."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        super().__init__(config_path, port, log_path)
        self.notify = NotifySocket()

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "policy_server",
                "serve",
                "--workers",
                "2",
                "-c",
                str(self.config_path),
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "NOTIFY_SOCKET": self.notify.env},
        )
        log.close()

    async def ready(self, timeout: float = 20.0) -> None:
        try:
            await self.notify.until("READY=1", timeout=timeout)
        except AssertionError:
            raise AssertionError(self.log_path.read_text()) from None
        await super().ready(timeout)

    def stop(self) -> None:
        super().stop()
        self.notify.close()


async def test_two_processes_share_the_port_and_deliver_each_notice_once(
    tmp_path: Path, geo_files: dict[str, Path], sink: Sink
) -> None:
    port = free_port()
    config = tmp_path / "policy.toml"
    db = tmp_path / "store.sqlite3"
    service_config(config, port=port, geo=geo_files, storage={"path": db}, sink_url=sink.url)
    service = Workers(config, port, tmp_path / "service.log")
    service.start()
    try:
        await service.ready()
        assert service.proc is not None
        assert len(children(service.proc.pid)) == 2

        # every account logs in from two countries at once, each request on its own
        # connection, so the two processes race on the same accounts
        accounts = [f"user{i}" for i in range(60)]

        async def one(session: aiohttp.ClientSession, login: str, remote: str) -> int:
            body = {"login": login, "remote": remote, "protocol": "imap", "success": True}
            async with session.post(service.url("report"), data=json.dumps(body)) as resp:
                await resp.read()
                return resp.status

        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            statuses = await asyncio.gather(
                *(
                    one(session, login, remote)
                    for login in accounts
                    for remote in ("203.0.113.7", "198.51.100.9")
                )
            )
        assert set(statuses) == {200}

        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            notices = conn.execute("SELECT id, account, reasons FROM notices").fetchall()
        # per account: one first use, and one new-country notice for the other address
        assert len(notices) == 2 * len(accounts)
        by_account: dict[str, list[str]] = {}
        for _, account, reasons in notices:
            by_account.setdefault(account, []).extend(json.loads(reasons))
        for account in accounts:
            assert sorted(by_account[account]) == ["first_use", "new_country", "new_provider"]

        # delivered (or carried in another notice of the same account) exactly once
        for _ in range(200):
            with contextlib.closing(sqlite3.connect(db)) as conn, conn:
                settled = conn.execute(
                    "SELECT count(*) FROM deliveries WHERE status IN ('sent', 'folded')"
                ).fetchone()[0]
            if settled == len(notices):
                break
            await asyncio.sleep(0.1)
        assert settled == len(notices)
        ids = [n["id"] for n in sink.received]
        assert len(ids) == len(set(ids))
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            sent = {
                r[0] for r in conn.execute("SELECT notice_id FROM deliveries WHERE status = 'sent'")
            }
        assert set(ids) == sent
    finally:
        service.stop()
    assert service.proc is not None and service.proc.returncode == 0


async def test_serve_without_worker_and_a_separate_worker_process(
    tmp_path: Path, geo_files: dict[str, Path], sink: Sink
) -> None:
    port = free_port()
    config = tmp_path / "policy.toml"
    db = tmp_path / "store.sqlite3"
    service_config(config, port=port, geo=geo_files, storage={"path": db}, sink_url=sink.url)
    migrate = subprocess.run(
        [sys.executable, "-m", "policy_server", "migrate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "sqlite store schema up to date" in migrate.stdout

    class ServeOnly(Service):
        def start(self) -> None:
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "policy_server",
                    "serve",
                    "--no-worker",
                    "-c",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=log,
            )
            log.close()

    service = ServeOnly(config, port, tmp_path / "service.log")
    service.start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        await service.ready()
        async with aiohttp.ClientSession() as session:
            for i in range(5):
                body = {"login": f"u{i}", "remote": "203.0.113.7", "protocol": "imap",
                        "success": True}  # fmt: skip
                async with session.post(service.url("report"), data=json.dumps(body)) as resp:
                    assert resp.status == 200
        await asyncio.sleep(0.5)
        assert sink.received == []  # nobody delivers yet
        with (tmp_path / "worker.log").open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "policy_server", "worker", "-c", str(config)],
                stdout=log,
                stderr=log,
            )
        await sink.wait_for(5)
        assert sorted(n["login"] for n in sink.received) == [f"u{i}" for i in range(5)]
    finally:
        service.stop()
        if worker is not None:
            worker.terminate()
            assert worker.wait(15) == 0
