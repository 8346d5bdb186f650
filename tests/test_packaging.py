"""What ``pip install .`` ships: the command, the package data, the typing marker."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def test_wheel_contains_command_templates_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("policy_server-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "policy_server/delivery/templates/ja/notice.txt" in names
    assert "policy_server/delivery/templates/en/notice.txt" in names
    assert "policy_server/store/migrations/sqlite/0001_initial.sql" in names
    assert "policy_server/store/migrations/sqlite/0004_breaker_and_controls.sql" in names
    assert "policy_server/store/migrations/postgres/0001_initial.sql" in names
    for language in ("ja", "en"):
        for name in ("notice.txt", "subject.txt", "sms.txt"):
            assert f"policy_server/delivery/templates/{language}/{name}" in names
    for name in ("base.html", "question.html", "result.html", "refused.html", "page.css"):
        assert f"policy_server/web/templates/{name}" in names
    assert "policy_server/store/migrations/sqlite/0006_feedback.sql" in names
    assert "policy_server/store/migrations/postgres/0003_feedback.sql" in names
    assert "policy_server/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "policy-server = policy_server.commands.main:main" in text


def test_module_and_console_script_run() -> None:
    for command in (
        [sys.executable, "-m", "policy_server", "--version"],
        [str(Path(sys.executable).parent / "policy-server"), "--version"],
    ):
        run = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        assert run.stdout.startswith("policy-server ")
