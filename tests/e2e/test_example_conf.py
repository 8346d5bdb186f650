"""dovecot-example.conf is accepted by Dovecot as shipped and says what the service needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import EXAMPLE, example_policy_settings

pytestmark = pytest.mark.e2e


def test_settings_the_service_relies_on() -> None:
    settings = example_policy_settings()
    assert settings["auth_policy_server_url"] == "http://127.0.0.1:4001/"
    assert settings["auth_policy_hash_nonce"]
    assert settings["auth_policy_report_after_auth"] == "yes"
    assert settings["auth_policy_reject_on_fail"] == "no"
    attributes = dict(
        pair.split("=", 1) for pair in settings["auth_policy_request_attributes"].split()
    )
    assert attributes == {
        "login": "%{requested_username}",
        "remote": "%{rip}",
        "protocol": "%s",
        "session_id": "%{session}",
    }


def test_every_setting_is_explained() -> None:
    # a comment may cover a group of settings on the lines right below it
    explained = False
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("auth_policy_"):
            assert explained, f"no comment above: {line}"
        else:
            explained = line.startswith("#")


def test_dovecot_accepts_the_file_as_an_include(tmp_path: Path) -> None:
    conf = tmp_path / "dovecot.conf"
    conf.write_text(
        f"base_dir = {tmp_path}/run\nssl = no\nprotocols = imap\n!include {EXAMPLE}\n",
        encoding="utf-8",
    )
    names = sorted(example_policy_settings())
    # -P: show the nonce too, which doveconf otherwise hides
    run = subprocess.run(
        ["doveconf", "-P", "-c", str(conf), "-h", *names],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    seen = dict(zip(names, run.stdout.splitlines(), strict=True))
    assert seen == {name: example_policy_settings()[name] for name in names}
