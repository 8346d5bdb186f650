"""The shipped Dovecot files: accepted verbatim by each major's stock configuration, explained."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from builds import NONCE, SHIPPED, DovecotBuild, install_shipped

pytestmark = pytest.mark.e2e

URL = "http://127.0.0.1:4011/"
HEADER = "X-API-Key: s3cret"
ATTRIBUTES_23 = {
    "login": "%{requested_username}",
    "remote": "%{rip}",
    "protocol": "%s",
    "session_id": "%{session}",
    "device_id": "%{client_id}",
}
ATTRIBUTES_24 = {
    "login": "%{requested_username}",
    "remote": "%{remote_ip}",
    "protocol": "%{protocol}",
    "session_id": "%{session}",
    "device_id": "%{client_id}",
    "fail_type": "%{fail_type}",
}


@pytest.mark.parametrize("major", sorted(SHIPPED))
def test_every_setting_is_explained(major: str) -> None:
    # a comment may cover a group of settings (or a block) on the lines right below it
    explained = False
    for line in SHIPPED[major].read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            explained = True
        elif not line.strip():
            explained = False
        elif not line.startswith((" ", "}")):
            assert explained, f"{SHIPPED[major].name}: no comment above: {line}"


@pytest.mark.parametrize("major", sorted(SHIPPED))
def test_nothing_to_edit_but_url_secret_and_nonce(major: str) -> None:
    text = SHIPPED[major].read_text(encoding="utf-8")
    assert "auth_policy_server_url = http://127.0.0.1:4001/" in text
    assert "auth_policy_server_api_header = X-API-Key: change-me" in text
    assert "auth_policy_hash_nonce = change-me-to-a-long-random-string" in text
    edited = install_shipped(major, URL, HEADER)
    changed = [
        (old, new)
        for old, new in zip(text.splitlines(), edited.splitlines(), strict=True)
        if old != new
    ]
    assert sorted(new for _, new in changed) == [
        f"auth_policy_hash_nonce = {NONCE}",
        f"auth_policy_server_api_header = {HEADER}",
        f"auth_policy_server_url = {URL}",
    ]


@pytest.fixture
def stock(build: DovecotBuild) -> Iterator[Path]:
    """A copy of the build's stock /etc/dovecot with the shipped file in conf.d/, untouched."""
    work = Path(tempfile.mkdtemp(prefix="policy-server-conf-", dir=build.work_parent()))
    etc = work / "etc"
    shutil.copytree(build.stock_config(), etc, symlinks=True)
    (etc / "conf.d" / "95-policy-server.conf").write_text(
        install_shipped(build.major, URL, HEADER), encoding="utf-8"
    )
    yield etc / "dovecot.conf"
    shutil.rmtree(work, ignore_errors=True)


def doveconf(build: DovecotBuild, config: Path, *args: str) -> str:
    # -P: show the nonce too, which doveconf otherwise hides
    run = subprocess.run(
        build.command("doveconf", "-P", "-c", str(build.inner_path(config)), *args),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    # in a chroot without /proc, doveconf cannot list mounts; nothing else may be said
    problems = [line for line in run.stderr.splitlines() if "setmntent" not in line]
    assert problems == []
    return run.stdout


def test_stock_dovecot_accepts_the_shipped_file(build: DovecotBuild, stock: Path) -> None:
    if build.major == "2.3":
        names = [
            "auth_policy_server_url",
            "auth_policy_server_api_header",
            "auth_policy_hash_nonce",
            "auth_policy_reject_on_fail",
            "auth_policy_report_after_auth",
            "auth_policy_check_before_auth",
            "auth_policy_request_attributes",
            "imap_id_retain",
        ]
        values = dict(zip(names, doveconf(build, stock, "-h", *names).splitlines(), strict=True))
        attributes = dict(
            pair.split("=", 1) for pair in values.pop("auth_policy_request_attributes").split()
        )
        assert values == {
            "auth_policy_server_url": URL,
            "auth_policy_server_api_header": HEADER,
            "auth_policy_hash_nonce": NONCE,
            "auth_policy_reject_on_fail": "no",
            "auth_policy_report_after_auth": "yes",
            "auth_policy_check_before_auth": "no",
            "imap_id_retain": "yes",
        }
        assert attributes == ATTRIBUTES_23
        return
    shown = doveconf(build, stock, "-n", "auth_policy", "imap_id_retain")
    block = shown[shown.index("auth_policy {") :]
    settings = dict(re.findall(r"^  (\w+) = (.*)$", block, flags=re.MULTILINE))
    assert settings == {
        "check_after_auth": "no",
        "check_before_auth": "no",
        "hash_nonce": NONCE,
        "log_only": "no",
        "reject_on_fail": "no",
        "report_after_auth": "yes",
        "request_attributes": "",  # the reset that keeps Dovecot's default list (pwhash) out
        "server_api_header": HEADER,
        "server_url": URL,
        "http_client_request_absolute_timeout": "2s",
    }
    attributes = block[block.index("request_attributes {") :].split("\n  }", 1)[0]
    assert dict(re.findall(r"^    (\S+) = (.*)$", attributes, flags=re.MULTILINE)) == ATTRIBUTES_24
    assert "imap_id_retain = yes" in shown.splitlines()
