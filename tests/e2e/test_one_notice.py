"""A mail program's IMAP and SMTP logins from one new place make one notice, through Dovecot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from builds import DovecotBuild
from clients import imap_login, submission_login
from world import start_world, stop_world

pytestmark = pytest.mark.e2e


def test_imap_and_submission_from_one_new_address_are_one_notice(
    build: DovecotBuild, e2e_dir: Path, geo: dict[str, Path]
) -> None:
    # hold each new notice 3 s, as [delivery] hold_s does (60 s by default), so the
    # submission login that follows the IMAP one can join it
    world = start_world(build, e2e_dir / "one-notice", geo, hold_s=3.0)
    try:
        d = world.dovecot
        started = time.monotonic()
        assert imap_login(d.imap_port, "user5", d.password("user5"), "192.0.2.50")
        assert submission_login(d.submission_port, "user5", d.password("user5"), "192.0.2.51")
        assert imap_login(d.imap_port, "user5", d.password("user5"), "192.0.2.50")
        (notice,) = world.sink.wait_for("user5")
        assert time.monotonic() - started >= 3.0
        assert notice["reasons"] == ["first_use"]
        assert (notice["protocol"], notice["protocols"]) == ("imap", ["imap", "submission"])
        assert "(IMAP/SMTP)" in notice["message"]
        time.sleep(1.0)
        assert len(world.sink.received("user5")) == 1
    finally:
        stop_world(world)


def test_the_mail_programs_id_reaches_the_notice(
    build: DovecotBuild, e2e_dir: Path, geo: dict[str, Path]
) -> None:
    world = start_world(build, e2e_dir / "mail-program", geo)
    try:
        d = world.dovecot
        thunderbird = '"name" "Thunderbird" "version" "128.3"'
        assert imap_login(d.imap_port, "user6", d.password("user6"), "192.0.2.60", thunderbird)
        (notice,) = world.sink.wait_for("user6")
        assert notice["client"] == {"name": "Thunderbird", "version": "128.3"}
        # the webhook's message (in English, the harness's language)
        assert "■ Mail program\nThunderbird 128\n" in notice["message"]
    finally:
        stop_world(world)
