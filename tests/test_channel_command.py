"""The command channel with real programs: the JSON on stdin, exit statuses, timeouts."""

# Japanese text uses full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import make_notice

from policy_server.config import CommandChannelConfig
from policy_server.delivery.channels.base import build_channel
from policy_server.delivery.channels.command import CommandChannel
from policy_server.delivery.channels.errors import PermanentDeliveryError, TemporaryDeliveryError
from policy_server.delivery.render import RenderedMessage
from policy_server.model import Notice, Recipient
from policy_server.programs import STDERR_CHARS

BODY = "【Example Mailへのアクセスのお知らせ】\n■国・地域（推定）\nアメリカ合衆国\n"
MESSAGE = RenderedMessage(
    subject="【Example Mail】アクセスのお知らせ（アメリカ合衆国）",
    body=BODY,
    short="【Example Mail】アメリカ合衆国からIMAPでアクセスがありました。",
    language="ja",
)

# Writes its standard input to argv[1], then exits with argv[2] after printing argv[3] to stderr.
RECORD = """
import sys
data = sys.stdin.buffer.read()
with open(sys.argv[1], "wb") as out:
    out.write(data)
if len(sys.argv) > 3:
    sys.stderr.write(sys.argv[3])
sys.exit(int(sys.argv[2]))
"""

# Writes its pid to argv[1] and the pid of a child it starts to argv[2], then sleeps.
LINGER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
with open(sys.argv[2], "w") as out:
    out.write(str(child.pid))
with open(sys.argv[1], "w") as out:
    out.write(str(__import__("os").getpid()))
time.sleep(30)
"""


@pytest.fixture
def notice() -> Notice:
    return make_notice(remote="::ffff:198.51.100.20", protocols=("imap", "submission"))


def channel_for(*command: str, **settings: Any) -> CommandChannel:
    channel = build_channel(
        CommandChannelConfig(type="command", name="script", command=command, **settings)
    )
    assert isinstance(channel, CommandChannel)
    return channel


def record(out: Path, status: int = 0, stderr: str | None = None) -> CommandChannel:
    args = [sys.executable, "-c", RECORD, str(out), str(status)]
    if stderr is not None:
        args.append(stderr)
    return channel_for(*args, timeout_s=10)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")


async def test_stdin_carries_the_contract_and_the_texts(tmp_path: Path, notice: Notice) -> None:
    out = tmp_path / "stdin.json"
    await record(out).send(notice, MESSAGE, Recipient("taro@example.jp", "ja", "Asia/Tokyo"))

    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    document = json.loads(raw)
    expected = {
        "id": "01J8Z3K6Q2W4E5R6T7Y8U9I0OP",
        "login": "Taro@example.jp",
        "reasons": ["new_country", "new_provider"],
        "protocol": "imap",
        "remote": "::ffff:198.51.100.20",
        "country": "US",
        "asn": 64510,
        "as_org": "Example Hosting US",
        "time": "2020-03-10T20:12:44+00:00",
        "protocols": ["imap", "submission"],
        "message": BODY,
        "subject": MESSAGE.subject,
        "short": MESSAGE.short,
        "language": "ja",
        "recipient": "taro@example.jp",
    }
    assert {key: document.get(key) for key in expected} == expected
    # nothing else than the webhook contract and the texts
    assert document == {**notice.payload_fields(), **expected}
    # UTF-8 text, not \\u escapes
    assert "アメリカ合衆国".encode() in raw


@pytest.mark.parametrize("recipient", [None, Recipient("", "en", None)])
async def test_no_recipient_is_null(
    tmp_path: Path, notice: Notice, recipient: Recipient | None
) -> None:
    out = tmp_path / "stdin.json"
    unknown = replace(notice, country=None, asn=None, as_org=None)
    await record(out).send(unknown, MESSAGE, recipient)
    document = json.loads(out.read_bytes())
    assert document["recipient"] is None
    assert (document["country"], document["asn"], document["as_org"]) == (None, None, None)


async def test_program_that_ignores_stdin_is_delivered(notice: Notice) -> None:
    channel = channel_for(sys.executable, "-c", "pass", timeout_s=10)
    await channel.send(notice, MESSAGE)


async def test_exit_75_is_temporary(tmp_path: Path, notice: Notice) -> None:
    channel = record(tmp_path / "stdin.json", 75, "relay down, try later")
    with pytest.raises(TemporaryDeliveryError) as info:
        await channel.send(notice, MESSAGE)
    assert str(info.value) == "command script: exit status 75: relay down, try later"
    # the program ran and read the notice before it gave up
    assert json.loads((tmp_path / "stdin.json").read_bytes())["id"] == notice.id


async def test_other_exit_is_permanent_with_stderr(tmp_path: Path, notice: Notice) -> None:
    channel = record(tmp_path / "stdin.json", 3, "no such user:\n  taro\t(checked)\n")
    with pytest.raises(PermanentDeliveryError) as info:
        await channel.send(notice, MESSAGE)
    # stderr on one line, whitespace collapsed
    assert str(info.value) == "command script: exit status 3: no such user: taro (checked)"


async def test_exit_without_stderr_says_only_the_status(tmp_path: Path, notice: Notice) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await record(tmp_path / "stdin.json", 1).send(notice, MESSAGE)
    assert str(info.value) == "command script: exit status 1"


async def test_long_stderr_is_cut(tmp_path: Path, notice: Notice) -> None:
    channel = record(tmp_path / "stdin.json", 2, "z" * 10_000)
    with pytest.raises(PermanentDeliveryError) as info:
        await channel.send(notice, MESSAGE)
    assert str(info.value) == "command script: exit status 2: " + "z" * STDERR_CHARS


async def test_timeout_kills_the_program_and_what_it_started(
    tmp_path: Path, notice: Notice
) -> None:
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    channel = channel_for(
        sys.executable, "-c", LINGER, str(pid_file), str(child_file), timeout_s=0.5
    )
    started = time.monotonic()
    with pytest.raises(TemporaryDeliveryError) as info:
        await channel.send(notice, MESSAGE)
    assert time.monotonic() - started < 2.5
    assert str(info.value) == "command script: no exit within 0.5s, killed"

    pid, child = int(pid_file.read_text()), int(child_file.read_text())
    assert not running(pid)
    # the program's own child was in its process group and went with it; it is no child of
    # ours, so give its new parent a moment to reap it
    until = time.monotonic() + 2
    while running(child) and time.monotonic() < until:
        await asyncio.sleep(0.01)
    assert not running(child)


async def test_missing_program_is_temporary(tmp_path: Path, notice: Notice) -> None:
    channel = channel_for(str(tmp_path / "no-such-program"), "--flag")
    with pytest.raises(TemporaryDeliveryError) as info:
        await channel.send(notice, MESSAGE)
    assert str(info.value).startswith("command script: cannot start: ")
    assert "no-such-program" in str(info.value)


async def test_program_not_executable_is_temporary(tmp_path: Path, notice: Notice) -> None:
    script = tmp_path / "notify-owner"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert not os.access(script, os.X_OK)
    with pytest.raises(TemporaryDeliveryError, match="cannot start"):
        await channel_for(str(script)).send(notice, MESSAGE)


@pytest.mark.parametrize(
    ("recipient", "kind"), [("email", "email"), ("phone", "phone"), ("none", None)]
)
def test_recipient_setting_is_the_recipient_kind(recipient: str, kind: str | None) -> None:
    channel = channel_for("/bin/true", recipient=recipient)
    assert channel.recipient_kind == kind
    assert channel.name == "script"


def test_recipient_kind_defaults_to_none() -> None:
    channel = build_channel(CommandChannelConfig(type="command", command=("/bin/true",)))
    assert channel.recipient_kind is None
    assert channel.name == "command"
