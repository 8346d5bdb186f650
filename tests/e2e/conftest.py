"""End-to-end fixtures: a real Dovecot, the service, and a webhook sink, per test session."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from world import World, start_world, stop_world

REQUIRED = os.environ.get("POLICY_SERVER_REQUIRE_DOVECOT") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [name for name in ("dovecot", "doveadm") if shutil.which(name) is None]
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if missing and not REQUIRED:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{', '.join(missing)} not installed (Debian: dovecot-imapd "
                    "dovecot-pop3d dovecot-submissiond); set POLICY_SERVER_REQUIRE_DOVECOT=1 "
                    "to make this a failure"
                )
            )


@pytest.fixture(scope="session", autouse=True)
def _dovecot_present() -> None:
    missing = [name for name in ("dovecot", "doveadm") if shutil.which(name) is None]
    if missing and REQUIRED:
        pytest.fail(f"POLICY_SERVER_REQUIRE_DOVECOT=1 but {', '.join(missing)} not installed")


def _geo(directory: Path) -> dict[str, Path]:
    from geodata import write_standard_geodata

    return write_standard_geodata(directory)


@pytest.fixture(scope="session")
def e2e_dir() -> Iterator[Path]:
    # Dovecot's unprivileged processes must reach their files: pytest's own temporary
    # directories are private to root, so use one they can traverse.
    directory = Path(tempfile.mkdtemp(prefix="policy-server-e2e-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def geo(e2e_dir: Path) -> dict[str, Path]:
    return _geo(e2e_dir / "geo")


@pytest.fixture(scope="session")
def world(e2e_dir: Path, geo: dict[str, Path]) -> Iterator[World]:
    """The example configuration as shipped (report only)."""
    w = start_world(e2e_dir / "main", geo)
    yield w
    stop_world(w)
