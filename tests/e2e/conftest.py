"""End-to-end fixtures: a real Dovecot, the service, and a webhook sink, per test session."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from builds import DovecotBuild, debian13_build, host_build
from world import World, start_world, stop_world

# Each major, how to find it, and the variable that makes its absence a failure (CI sets both).
BUILDS: dict[str, tuple[Callable[[], DovecotBuild | str], str]] = {
    "2.3": (host_build, "POLICY_SERVER_REQUIRE_DOVECOT"),
    "2.4": (debian13_build, "POLICY_SERVER_REQUIRE_DOVECOT24"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", params=sorted(BUILDS))
def build(request: pytest.FixtureRequest) -> DovecotBuild:
    """Each Dovecot major in turn; a missing one is skipped, or a failure when required."""
    find, required = BUILDS[request.param]
    found = find()
    if isinstance(found, str):
        if os.environ.get(required) == "1":
            pytest.fail(f"{required}=1 but Dovecot {request.param} is missing: {found}")
        pytest.skip(f"Dovecot {request.param}: {found}; set {required}=1 to make this a failure")
    return found


def _geo(directory: Path) -> dict[str, Path]:
    from geodata import write_standard_geodata

    return write_standard_geodata(directory)


@pytest.fixture(scope="session")
def e2e_dir(build: DovecotBuild) -> Iterator[Path]:
    # Dovecot's unprivileged processes must reach their files: pytest's own temporary
    # directories are private to root, so use one they can traverse (inside the build's root
    # for a chroot build).
    directory = Path(tempfile.mkdtemp(prefix="policy-server-e2e-", dir=build.work_parent()))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def geo(e2e_dir: Path) -> dict[str, Path]:
    return _geo(e2e_dir / "geo")


@pytest.fixture(scope="session")
def world(build: DovecotBuild, e2e_dir: Path, geo: dict[str, Path]) -> Iterator[World]:
    """The shipped configuration of the build's major (report only)."""
    w = start_world(build, e2e_dir / "main", geo)
    yield w
    stop_world(w)
