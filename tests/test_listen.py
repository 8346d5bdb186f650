"""A listen address that cannot be used is one clear line and exit status 1, not a traceback."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support import Sink, free_port, service_config

pytestmark = pytest.mark.slow


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on (no SO_REUSEPORT, as most programs do)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policy_server", "serve", *extra, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "listening" not in output
    assert result.stderr.splitlines()[-1] == line, output
    assert output.count("cannot listen") == 1, output


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
def test_a_port_in_use_is_one_line_and_exit_1(
    tmp_path: Path, geo_files: dict[str, Path], taken_port: int, workers: list[str]
) -> None:
    config = service_config(
        tmp_path / "policy.toml",
        port=taken_port,
        geo=geo_files,
        storage={"path": tmp_path / "store.sqlite3"},
        sink_url="http://127.0.0.1:9/notify",
    )
    result = serve(config, *workers)
    assert_one_clear_line(
        result, f"policy-server: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    )


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
@pytest.mark.parametrize(
    ("listen", "cause"),
    [
        # a well-formed name (it passes the config's check) that no resolver knows
        ("policy-server-test.invalid:4001", "cannot resolve policy-server-test.invalid ("),
        # an address of no interface of this host (TEST-NET-1)
        ("192.0.2.1:4001", "cannot assign requested address"),
    ],
    ids=["unresolvable", "not-local"],
)
def test_an_address_that_cannot_be_listened_on_is_one_line_and_exit_1(
    tmp_path: Path, geo_files: dict[str, Path], workers: list[str], listen: str, cause: str
) -> None:
    config = service_config(
        tmp_path / "policy.toml",
        port=4001,
        geo=geo_files,
        storage={"path": tmp_path / "store.sqlite3"},
        sink_url="http://127.0.0.1:9/notify",
        server={"listen": listen},
    )
    result = serve(config, *workers)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "listening" not in output
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"policy-server: cannot listen on {listen}: {cause}"), last
    assert output.count("cannot listen") == 1, output


async def test_a_metrics_port_in_use_is_one_line_and_the_service_answers(
    tmp_path: Path, geo_files: dict[str, Path], taken_port: int, sink: Sink
) -> None:
    port = free_port()
    config = service_config(
        tmp_path / "policy.toml",
        port=port,
        geo=geo_files,
        storage={"path": tmp_path / "store.sqlite3"},
        sink_url=sink.url,
        metrics={"enabled": True, "listen": f"127.0.0.1:{taken_port}"},
    )
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policy_server", "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        body = json.dumps({"login": "probe", "remote": "127.0.0.1", "protocol": "imap"})
        answered = False
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                assert proc.poll() is None, log_path.read_text()
                try:
                    url = f"http://127.0.0.1:{port}/?command=allow"
                    async with session.post(url, data=body) as resp:
                        answered = resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert answered, log_path.read_text()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    output = log_path.read_text()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "metrics listener" in line]
    assert len(lines) == 1, output
    assert (
        f"metrics listener not started: cannot listen on 127.0.0.1:{taken_port}:"
        " address already in use" in lines[0]
    )
    # "listening" only for the listener that listens
    assert [line for line in output.splitlines() if "listening on" in line] == [
        line for line in output.splitlines() if f"listening on 127.0.0.1:{port}" in line
    ]
    assert f"listening on 127.0.0.1:{port}" in output
