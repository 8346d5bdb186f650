"""The operator command line: contacts, the outbox, test notices and channel checks.

Every command runs through ``main()`` against a real SQLite file written by the store itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from policy_server.client import Client
from policy_server.commands.contacts import read_contacts
from policy_server.commands.main import main
from policy_server.commands.outbox import STATUSES, parse_duration
from policy_server.config import Config, load_config
from policy_server.model import AddressClass, History, Origin
from policy_server.policy import Decision, decide
from policy_server.store import open_store
from policy_server.store.base import SuccessfulLogin

DAY = 86400.0
BOM = "\ufeff"
HEADER = "login,email,phone,language,timezone\n"
# 2023-11-14 22:13:20 UTC: 23:13:20 in Berlin, 07:13:20 the next day in Tokyo
AT = 1_700_000_000.0

TOKYO = Origin(
    "203.0.113.7", AddressClass.GLOBAL, "203.0.113.0/24", "JP", 64500, "Example Carrier JP"
)
BERLIN = Origin(
    "198.51.100.20", AddressClass.GLOBAL, "198.51.100.0/24", "DE", 64520, "Example Net DE"
)
CONTACT_COLUMNS = ("account", "email", "phone", "language", "timezone")


# -- the environment: a config file, the store behind it, the command ----------------------


def _toml(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays are valid TOML values
    return json.dumps(value)


class Env:
    """A config file in a temporary directory and ways to run commands against it."""

    def __init__(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        channels: Sequence[dict[str, Any]] = ({"type": "webhook", "name": "hook"},),
    ) -> None:
        self.dir = tmp_path
        self.capsys = capsys
        self.db = tmp_path / "store.sqlite3"
        lines = [
            "[storage]",
            f"path = {_toml(str(self.db))}",
            "group_commit_wait_ms = 0",
            "[message]",
            'language = "en"',
        ]
        for channel in channels:
            channel = dict(channel)
            if channel["type"] == "webhook":
                # nothing listens on the discard port: commands that only read never send
                channel.setdefault("url", "http://127.0.0.1:9/notify")
            lines.append("[[channels]]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in channel.items())
        self.config_path = tmp_path / "policy-server.toml"
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.config: Config = load_config(self.config_path)
        #: what every command that opens the store says first on stderr
        self.store_line = f"store: sqlite {self.db}\n"

    def run(self, *args: str) -> tuple[int, str, str]:
        """``policy-server ARGS -c CONFIG``: exit status, stdout, stderr."""
        self.capsys.readouterr()
        code = main([*args, "-c", str(self.config_path)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def migrate(self) -> None:
        """``policy-server migrate``: a store set up and empty, as read-only commands need."""
        assert self.run("migrate")[0] == 0

    def csv(self, text: str, name: str = "contacts.csv", encoding: str = "utf-8") -> str:
        path = self.dir / name
        path.write_bytes(text.encode(encoding))
        return str(path)

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.db)) as conn, conn:
            return conn.execute(statement, params).fetchall()

    def contacts(self) -> list[tuple[Any, ...]]:
        return self.sql(f"SELECT {', '.join(CONTACT_COLUMNS)} FROM contacts ORDER BY account")

    def set_delivery(
        self,
        notice_id: str,
        status: str,
        channel: str | None = None,
        attempts: int = 0,
        error: str | None = None,
    ) -> None:
        where = "notice_id = ?" + (" AND channel = ?" if channel else "")
        params = (notice_id, channel) if channel else (notice_id,)
        self.sql(
            f"UPDATE deliveries SET status = ?, attempts = ?, last_error = ? WHERE {where}",
            status,
            attempts,
            error,
            *params,
        )

    def record(self, *logins: tuple[str, str, Origin, float]) -> list[str]:
        """Record successful logins (account, login, origin, time) through the store; the ids
        of the notices they queued, one per login."""
        return asyncio.run(self._record(logins))

    async def _record(self, logins: Sequence[tuple[str, str, Origin, float]]) -> list[str]:
        config = self.config

        def policy(history: History, origin: Origin, at: float, client: Client | None) -> Decision:
            return decide(history, origin, at, config.policy, client)

        store = await open_store(config.storage)
        ids: list[str] = []
        try:
            for account, login, origin, at in logins:
                # bounded: a store whose writer failed would otherwise never answer
                outcome = await asyncio.wait_for(
                    store.record_success(
                        SuccessfulLogin(account, login, "imap", origin.address, origin, at),
                        policy,
                        [c.name for c in config.channels],
                        touch_after=0.0,
                        deadline_s=config.queue.deadline_s,
                    ),
                    10,
                )
                assert outcome.notice_id is not None, (account, origin)
                ids.append(outcome.notice_id)
        finally:
            await store.close()
        return ids


@pytest.fixture
def make_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Env]:
    def make(*channels: dict[str, Any]) -> Env:
        if not channels:
            return Env(tmp_path, capsys)
        return Env(tmp_path, capsys, channels)

    return make


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


class ThreadSink:
    """A webhook receiver in a thread of its own (``main()`` runs its own event loop)."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[dict[str, Any]] = []
        self.script: list[int] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        with self._lock:
            self.received.append(payload)
            status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, text="ok" if status < 400 else "nope")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/notify"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def thread_sink() -> Iterator[ThreadSink]:
    sink = ThreadSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


# -- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("45m", 45 * 60.0),
        ("12h", 12 * 3600.0),
        ("30d", 30 * DAY),
        ("2w", 14 * DAY),
        ("1.5h", 5400.0),
        (" 30d ", 30 * DAY),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "30x", "-5d", "d", "30 d", "30dd", "1e3", "1.d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# -- contacts -------------------------------------------------------------------------------


def test_import_then_show(env: Env) -> None:
    path = env.csv(
        BOM
        + HEADER
        + "Taro@Example.JP,taro@example.jp,+81 90-1234-5678,ja,Asia/Tokyo\n"
        + "bob,,,,\n"
        + "  carol@example.jp ,carol@example.jp,090 1234 5678,en,Europe/Berlin\n"
    )
    code, out, err = env.run("contacts", "import", path)
    assert (code, err) == (0, env.store_line)
    assert "imported 3 contact(s)" in out
    # accounts are stored as the service keys them: trimmed and case-folded
    assert env.contacts() == [
        ("bob", None, None, None, None),
        ("carol@example.jp", "carol@example.jp", "09012345678", "en", "Europe/Berlin"),
        ("taro@example.jp", "taro@example.jp", "+819012345678", "ja", "Asia/Tokyo"),
    ]
    code, out, _ = env.run("contacts", "show", "Taro@Example.JP")
    assert code == 0
    assert json.loads(out) == {
        "account": "taro@example.jp",
        "email": "taro@example.jp",
        "phone": "+819012345678",
        "language": "ja",
        "timezone": "Asia/Tokyo",
    }
    code, out, _ = env.run("contacts", "show", "taro@example.jp")
    assert code == 0 and json.loads(out)["phone"] == "+819012345678"


def test_import_columns_in_any_order_and_case(env: Env) -> None:
    path = env.csv(" Timezone ,EMAIL,Login\nAsia/Tokyo,hanako@example.jp,Hanako\n")
    code, out, _ = env.run("contacts", "import", path)
    assert code == 0 and "imported 1 contact(s)" in out
    assert env.contacts() == [("hanako", "hanako@example.jp", None, None, "Asia/Tokyo")]


def test_show_unknown_contact_exits_1(env: Env) -> None:
    env.migrate()
    code, out, err = env.run("contacts", "show", "nobody")
    assert code == 1 and out == ""
    assert "no contact for nobody" in err


GOOD = "kept@example.jp,kept@example.jp,+819011112222,ja,Asia/Tokyo\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEADER + "new,new@example.jp,,,\nbad,not-an-address,,,\n", ["line 3", "not-an-address"]),
        (HEADER + "bad,,090-12,,\n", ["line 2", "not a phone number"]),
        (HEADER + "bad,,+81 90 1234 5678 x9,,\n", ["line 2", "not a phone number"]),
        (HEADER + "bad,,,,Mars/Olympus\n", ["line 2", "unknown time zone 'Mars/Olympus'"]),
        (HEADER + "dup@example.jp,,,,\nnew,,,,\nDup@Example.JP,,,,\n", ["line 4", "line 2"]),
        (HEADER + ",x@example.jp,,,\n", ["line 2", "empty login"]),
        ("email,phone\nx@example.jp,\n", ["'login'"]),
        ("login,email,fax\nnew,new@example.jp,0312345678\n", ["unknown column(s) fax"]),
        # blank lines are skipped but still counted: the number is the file's line
        (HEADER + "new,,,,\n\n\nbad,,,,Nowhere/City\n", ["line 5", "Nowhere/City"]),
        ("", ["'login'"]),
    ],
    ids=[
        "bad-email",
        "short-phone",
        "phone-with-letters",
        "unknown-timezone",
        "duplicate-login",
        "empty-login",
        "no-login-column",
        "unknown-column",
        "line-numbers-after-blank-lines",
        "empty-file",
    ],
)
def test_import_with_a_bad_row_imports_nothing(env: Env, text: str, expected: list[str]) -> None:
    assert env.run("contacts", "import", env.csv(HEADER + GOOD, "first.csv"))[0] == 0
    before = env.contacts()
    assert [row[0] for row in before] == ["kept@example.jp"]
    # files with the full header also change the row imported before, which must stay as it was
    changed = "kept@example.jp,changed@example.jp,,en,UTC\n"
    body = text if not text.startswith(HEADER) else text + changed
    code, out, err = env.run("contacts", "import", env.csv(body, "second.csv"))
    assert code == 1 and out == ""
    for fragment in expected:
        assert fragment in err
    assert "nothing imported" in err
    assert env.contacts() == before


def test_problems_are_all_reported_with_line_numbers(env: Env) -> None:
    path = env.csv(
        HEADER + "ok,,,,\n" + "a,a@,,,\n" + "b,,12,,\n" + "c,,,,Nowhere/City\n" + "OK,,,,\n"
    )
    code, _, err = env.run("contacts", "import", path)
    assert code == 1
    lines = err.splitlines()
    assert any(line.startswith("line 3:") and "'a@'" in line for line in lines)
    assert any(line.startswith("line 4:") and "'12'" in line for line in lines)
    assert any(line.startswith("line 5:") and "Nowhere/City" in line for line in lines)
    assert any(line.startswith("line 6:") and "already on line 2" in line for line in lines)
    assert lines[-1] == "nothing imported: 4 problem(s)"
    # refused before the store was even opened
    assert not env.db.exists()


def test_import_unreadable_file_exits_1(env: Env) -> None:
    code, _, err = env.run("contacts", "import", str(env.dir / "missing.csv"))
    assert code == 1 and "cannot read" in err
    latin1 = env.csv(HEADER + "jos\xe9,,,,\n", "latin1.csv", encoding="latin-1")
    code, _, err = env.run("contacts", "import", latin1)
    assert code == 1 and "cannot read" in err
    assert not env.db.exists()


def test_reimport_replaces_the_row(env: Env) -> None:
    first = env.csv(HEADER + "alice,alice@example.jp,+819011112222,ja,Asia/Tokyo\n", "a.csv")
    assert env.run("contacts", "import", first)[0] == 0
    second = env.csv(HEADER + "ALICE,alice@example.com,,en,\nbob,,,,\n", "b.csv")
    code, out, _ = env.run("contacts", "import", second)
    assert code == 0 and "imported 2 contact(s)" in out
    # every column is replaced, empty ones included: the file is the truth for its rows
    assert env.contacts() == [
        ("alice", "alice@example.com", None, "en", None),
        ("bob", None, None, None, None),
    ]
    code, out, _ = env.run("contacts", "show", "alice")
    assert code == 0 and json.loads(out)["email"] == "alice@example.com"


def test_remove(env: Env) -> None:
    path = env.csv(HEADER + "alice@example.jp,,,,\nbob,,,,\n")
    assert env.run("contacts", "import", path)[0] == 0
    code, out, _ = env.run("contacts", "remove", "Alice@Example.JP")
    assert code == 0 and "removed Alice@Example.JP" in out
    assert [row[0] for row in env.contacts()] == ["bob"]
    assert env.run("contacts", "show", "alice@example.jp")[0] == 1
    code, out, _ = env.run("contacts", "remove", "alice@example.jp")
    assert code == 1 and "no contact for alice@example.jp" in out
    assert [row[0] for row in env.contacts()] == ["bob"]


def test_read_contacts_directly(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    # a decomposed accent (e + combining acute), mixed case, spaces around the login
    path.write_text(BOM + HEADER + "  Jose\u0301@Example.JP ,,+81-90-1234-5678,ja,\n", "utf-8")
    contacts, problems = read_contacts(path, Config())
    assert problems == []
    (contact,) = contacts
    # the account key a login of that person gets: trimmed, NFC, case-folded
    assert contact.account == "jos\xe9@example.jp"
    assert (contact.email, contact.phone, contact.language, contact.timezone) == (
        None,
        "+819012345678",
        "ja",
        None,
    )
    keep_case = Config.model_validate({"accounts": {"casefold": False}})
    contacts, problems = read_contacts(path, keep_case)
    assert problems == [] and contacts[0].account == "Jos\xe9@Example.JP"


# -- outbox: counts and list ----------------------------------------------------------------


# the statuses an operator must be able to list: what the worker and the rules write
OPERATOR_STATUSES = ("queued", "sending", "sent", "folded", "undeliverable", "dead")


def test_counts_and_list_by_every_status(env: Env) -> None:
    assert set(OPERATOR_STATUSES) <= set(STATUSES)
    ids = env.record(*((f"user{i}", f"user{i}", TOKYO, AT + i) for i in range(len(STATUSES))))
    by_status = dict(zip(STATUSES, ids, strict=True))
    for status, notice_id in by_status.items():
        env.set_delivery(notice_id, status)

    code, out, _ = env.run("outbox", "counts")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [[s, "1"] for s in STATUSES]

    for status, notice_id in by_status.items():
        code, out, _ = env.run("outbox", "list", "--status", status)
        assert code == 0, status
        rows = [json.loads(line) for line in out.splitlines()]
        assert [(r["id"], r["status"], r["channel"]) for r in rows] == [(notice_id, status, "hook")]
        assert rows[0]["account"] == f"user{ids.index(notice_id)}"
        assert rows[0]["reasons"] == ["first_use"]

    code, out, _ = env.run("outbox", "list")
    assert code == 0
    # newest first
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids[::-1]
    code, out, _ = env.run("outbox", "list", "--limit", "2")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids[:-3:-1]


def test_counts_of_an_empty_outbox_list_every_status(env: Env) -> None:
    env.migrate()
    code, out, _ = env.run("outbox", "counts")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [[s, "0"] for s in STATUSES]


def test_list_of_an_empty_outbox_says_so(env: Env) -> None:
    env.migrate()
    # stdout stays JSON lines (none here); what is said goes to stderr
    assert env.run("outbox", "list") == (0, "", env.store_line + "no deliveries\n")
    env.record(("bob", "bob", TOKYO, AT))  # queued, not dead
    assert env.run("outbox", "list", "--status", "dead") == (
        0,
        "",
        env.store_line + "no dead deliveries\n",
    )


def test_list_refuses_an_unknown_status(env: Env) -> None:
    with pytest.raises(SystemExit) as exit_:
        env.run("outbox", "list", "--status", "lost")
    assert exit_.value.code == 2
    assert "invalid choice: 'lost'" in env.capsys.readouterr().err


# -- outbox show ----------------------------------------------------------------------------

SHOW_CHANNELS = (
    {"type": "webhook", "name": "hook"},
    {"type": "email", "name": "mail", "sender": "notices@example.jp", "port": 9},
)


def _berlin_notice(env: Env) -> str:
    _, berlin = env.record(
        ("taro@example.jp", "Taro@Example.JP", TOKYO, AT - DAY),
        ("taro@example.jp", "Taro@Example.JP", BERLIN, AT),
    )
    return berlin


def test_show_a_notice_with_history_deliveries_and_messages(make_env: Callable[..., Env]) -> None:
    env = make_env(*SHOW_CHANNELS)
    notice_id = _berlin_notice(env)
    env.set_delivery(notice_id, "dead", "hook", attempts=3, error="webhook hook: HTTP 400")
    env.set_delivery(notice_id, "sent", "mail", attempts=1)

    code, out, err = env.run("outbox", "show", notice_id)
    assert (code, err) == (0, env.store_line)
    shown = json.loads(out)
    notice = shown["notice"]
    assert notice["id"] == notice_id
    assert notice["account"] == "taro@example.jp" and notice["login"] == "Taro@Example.JP"
    assert notice["reasons"] == ["new_country", "new_provider"]
    assert (notice["country"], notice["asn"], notice["prefix"]) == ("DE", 64520, "198.51.100.0/24")
    # the history as it was when the login was judged: only the Tokyo origin
    (seen,) = notice["history"]
    assert (seen["prefix"], seen["country"], seen["provider"]) == (
        "203.0.113.0/24",
        "JP",
        "AS64500",
    )
    assert (seen["first_seen"], seen["count"]) == (AT - DAY, 1)

    hook, mail = shown["deliveries"]
    assert (hook["channel"], hook["status"], hook["attempts"]) == ("hook", "dead", 3)
    assert hook["last_error"] == "webhook hook: HTTP 400"
    assert (mail["channel"], mail["status"], mail["attempts"]) == ("mail", "sent", 1)
    assert mail["last_error"] is None
    # no contact: English (message.language), Tokyo time, the login as the e-mail address
    assert hook["recipient"] == "" and mail["recipient"] == "Taro@Example.JP"
    for delivery in (hook, mail):
        message = delivery["message"]
        assert message["subject"] == "Access to Example Mail (IMAP) from Germany"
        assert "Germany" in message["body"] and "2023/11/15 07:13:20" in message["body"]
        assert message["short"].startswith("Example Mail: access (IMAP) at 2023/11/15 07:13:20")


def test_show_renders_in_the_contact_language_and_zone(make_env: Callable[..., Env]) -> None:
    env = make_env(*SHOW_CHANNELS)
    notice_id = _berlin_notice(env)
    contacts = env.csv(HEADER + "TARO@example.jp,taro.home@example.jp,,ja,Europe/Berlin\n")
    assert env.run("contacts", "import", contacts)[0] == 0

    code, out, _ = env.run("outbox", "show", notice_id)
    assert code == 0
    hook, mail = json.loads(out)["deliveries"]
    assert mail["recipient"] == "taro.home@example.jp"
    for delivery in (hook, mail):
        message = delivery["message"]
        assert "ドイツ" in message["subject"] and "ドイツ" in message["body"]
        assert "Germany" not in message["body"]
        # the access time in the contact's zone, not message.timezone
        assert "2023/11/14 23:13:20" in message["body"]


def test_show_without_an_address_still_uses_the_contact_language(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(
        {
            "type": "email",
            "name": "mail",
            "sender": "notices@example.jp",
            "recipient_fallback": "none",
        }
    )
    notice_id = _berlin_notice(env)
    assert env.run("contacts", "import", env.csv(HEADER + "taro@example.jp,,,ja,\n"))[0] == 0
    code, out, _ = env.run("outbox", "show", notice_id)
    assert code == 0
    (mail,) = json.loads(out)["deliveries"]
    assert mail["recipient"] is None
    assert "ドイツ" in mail["message"]["body"]


def test_show_a_channel_that_cannot_be_built(make_env: Callable[..., Env]) -> None:
    env = make_env({"type": "log", "name": "log"}, {"type": "webhook", "name": "hook"})
    notice_id = _berlin_notice(env)
    broken = make_env(
        {"type": "log", "name": "log"},
        {"type": "webhook", "name": "hook", "secret": "whsec_not base64!"},
    )
    code, out, _ = broken.run("outbox", "show", notice_id)
    assert code == 0
    hook, log = json.loads(out)["deliveries"]
    assert hook["message"] is None and "secret" in hook["problem"]
    assert "Germany" in log["message"]["body"]


def test_show_a_delivery_of_a_channel_no_longer_configured(make_env: Callable[..., Env]) -> None:
    old = make_env({"type": "webhook", "name": "old-hook"})
    (notice_id,) = old.record(("bob", "bob", TOKYO, AT))
    env = make_env({"type": "log", "name": "log"})
    code, out, _ = env.run("outbox", "show", notice_id)
    assert code == 0
    (delivery,) = json.loads(out)["deliveries"]
    assert delivery["channel"] == "old-hook" and delivery["message"] is None


def test_show_unknown_notice_exits_1(env: Env) -> None:
    env.record(("bob", "bob", TOKYO, AT))
    code, out, err = env.run("outbox", "show", "no-such-id")
    assert code == 1 and out == ""
    assert "no notice no-such-id" in err


# -- outbox retry ---------------------------------------------------------------------------


def _claimable(env: Env) -> list[tuple[str, str]]:
    async def claim() -> list[tuple[str, str]]:
        store = await open_store(env.config.storage)
        try:
            claimed = await store.claim("test", 10, time.time(), 60.0)
        finally:
            await store.close()
        return [(d.notice.id, d.channel) for d in claimed]

    return asyncio.run(claim())


def test_retry_queues_a_dead_delivery_again(make_env: Callable[..., Env]) -> None:
    env = make_env({"type": "webhook", "name": "hook"}, {"type": "log", "name": "log"})
    # a notice from long ago: its deadline has passed
    notice_id, other_id = env.record(
        ("bob", "bob", TOKYO, time.time() - 10 * DAY),
        ("carol", "carol", TOKYO, time.time() - 10 * DAY),
    )
    env.set_delivery(notice_id, "dead", "hook", attempts=1, error="webhook hook: HTTP 400")
    env.set_delivery(notice_id, "sent", "log", attempts=1)
    env.set_delivery(other_id, "dead", attempts=1, error="webhook hook: HTTP 400")
    assert _claimable(env) == []

    before = time.time()
    code, out, err = env.run("outbox", "retry", notice_id)
    after = time.time()
    assert (code, err) == (0, env.store_line)
    assert f"1 delivery(ies) of {notice_id} queued again" in out
    rows = env.sql(
        "SELECT notice_id, channel, status, next_attempt, deadline FROM deliveries"
        " ORDER BY notice_id = ? DESC, channel",
        notice_id,
    )
    (_, _, hook_status, next_attempt, deadline), log_row, *others = rows
    assert hook_status == "queued"
    assert before <= next_attempt <= after
    assert deadline >= before + env.config.queue.deadline_s
    assert log_row[1:3] == ("log", "sent")
    # the other notice's dead deliveries are left alone
    assert {row[2] for row in others} == {"dead"}
    # and a worker takes the retried delivery now
    assert _claimable(env) == [(notice_id, "hook")]


def test_retry_queues_undeliverable_too(env: Env) -> None:
    (notice_id,) = env.record(("bob", "bob", TOKYO, time.time()))
    env.set_delivery(notice_id, "undeliverable", error="no recipient")
    code, out, _ = env.run("outbox", "retry", notice_id)
    assert code == 0 and "1 delivery(ies)" in out
    assert env.sql("SELECT status FROM deliveries") == [("queued",)]


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "folded"])
def test_retry_with_nothing_dead_exits_1(env: Env, status: str) -> None:
    (notice_id,) = env.record(("bob", "bob", TOKYO, time.time()))
    env.set_delivery(notice_id, status, attempts=2)
    code, out, err = env.run("outbox", "retry", notice_id)
    assert (code, out) == (1, "")
    assert err == env.store_line + (
        f"policy-server: notice {notice_id} has no dead or undeliverable delivery:"
        f" its deliveries are {status} (hook)\n"
    )
    assert env.sql("SELECT status, attempts FROM deliveries") == [(status, 2)]


def test_retry_names_the_status_of_each_channel(make_env: Callable[..., Env]) -> None:
    env = make_env({"type": "webhook", "name": "hook"}, {"type": "log", "name": "log"})
    (notice_id,) = env.record(("bob", "bob", TOKYO, time.time()))
    env.set_delivery(notice_id, "sent", "hook")
    code, out, err = env.run("outbox", "retry", notice_id)
    assert (code, out) == (1, "")
    assert "its deliveries are sent (hook), queued (log)\n" in err


def test_retry_unknown_notice_exits_1(env: Env) -> None:
    env.migrate()
    code, out, err = env.run("outbox", "retry", "no-such-id")
    assert (code, out) == (1, "")
    assert err == env.store_line + "policy-server: no notice no-such-id\n"


# -- outbox purge ---------------------------------------------------------------------------


def test_purge_deletes_only_old_finished_notices(make_env: Callable[..., Env]) -> None:
    env = make_env({"type": "webhook", "name": "hook"}, {"type": "log", "name": "log"})
    old = time.time() - 40 * DAY
    names = ["sent", "dead", "undeliverable", "folded", "queued", "sending", "mixed", "recent"]
    ids = dict(
        zip(
            names,
            env.record(
                *(
                    (name, name, TOKYO, old if name != "recent" else time.time() - DAY)
                    for name in names
                )
            ),
            strict=True,
        )
    )
    for name in ("sent", "dead", "undeliverable", "folded", "queued", "sending"):
        env.set_delivery(ids[name], name)
    env.set_delivery(ids["mixed"], "sent", "hook")
    env.set_delivery(ids["mixed"], "queued", "log")
    env.set_delivery(ids["recent"], "sent")

    code, out, _ = env.run("outbox", "purge", "--older-than", "60d")
    assert code == 0 and "purged 0 notice(s) older than 60d" in out
    assert len(env.sql("SELECT id FROM notices")) == len(names)

    code, out, err = env.run("outbox", "purge", "--older-than", "30d")
    assert (code, err) == (0, env.store_line)
    assert "purged 4 notice(s) older than 30d" in out
    kept = {row[0] for row in env.sql("SELECT id FROM notices")}
    assert kept == {ids[name] for name in ("queued", "sending", "mixed", "recent")}
    # the deliveries of purged notices go with them
    assert {row[0] for row in env.sql("SELECT DISTINCT notice_id FROM deliveries")} == kept
    assert len(env.sql("SELECT 1 FROM deliveries")) == 2 * len(kept)


def test_purge_refuses_a_bad_duration(env: Env) -> None:
    (notice_id,) = env.record(("bob", "bob", TOKYO, time.time() - 40 * DAY))
    env.set_delivery(notice_id, "sent")
    code, out, err = env.run("outbox", "purge", "--older-than", "soon")
    assert code == 2 and out == ""
    assert "not a duration: 'soon'" in err and "30d" in err
    assert env.sql("SELECT id FROM notices") == [(notice_id,)]


def test_purge_bad_duration_as_a_process(env: Env) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "policy_server",
            "outbox",
            "purge",
            "--older-than",
            "soon",
            "-c",
            str(env.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "not a duration: 'soon'" in run.stderr
    assert "Traceback" not in run.stderr


# -- send-test ------------------------------------------------------------------------------


def test_send_test_through_a_webhook(make_env: Callable[..., Env], thread_sink: ThreadSink) -> None:
    env = make_env({"type": "webhook", "name": "hook", "url": thread_sink.url})
    env.migrate()
    code, out, err = env.run("send-test", "Taro@Example.JP", "--channel", "hook")
    assert (code, err) == (0, env.store_line)
    (payload,) = thread_sink.received
    assert payload["login"] == "Taro@Example.JP"
    assert payload["id"].startswith("test-")
    assert payload["reasons"] == ["new_country", "new_provider"]
    # no contact: the configured language
    assert "Germany" in payload["message"]
    first, *body = out.splitlines()
    assert first == f"sent test notice {payload['id']} to hook"
    assert "\n".join(body).strip() == payload["message"].strip()
    # nothing is queued or recorded by a test notice
    assert env.sql("SELECT count(*) FROM notices") == [(0,)]

    contacts = env.csv(HEADER + "taro@example.jp,,,ja,Asia/Tokyo\n")
    assert env.run("contacts", "import", contacts)[0] == 0
    code, out, _ = env.run("send-test", "Taro@Example.JP", "--channel", "hook")
    assert code == 0
    first_payload, second = thread_sink.received
    assert second["id"].startswith("test-") and second["id"] != first_payload["id"]
    # the contact's language, found through the normalized login
    assert "ドイツ" in second["message"] and "ドイツ" in out


@pytest.mark.parametrize(("status", "kind"), [(400, "permanent"), (503, "temporary")])
def test_send_test_reports_a_failed_delivery(
    make_env: Callable[..., Env], thread_sink: ThreadSink, status: int, kind: str
) -> None:
    thread_sink.script = [status]
    env = make_env({"type": "webhook", "name": "hook", "url": thread_sink.url})
    env.migrate()
    code, out, err = env.run("send-test", "bob", "--channel", "hook")
    assert code == 1 and out == ""
    assert f"not delivered ({kind} failure)" in err and str(status) in err
    assert len(thread_sink.received) == 1


def test_send_test_unknown_channel_exits_2(
    make_env: Callable[..., Env], thread_sink: ThreadSink
) -> None:
    env = make_env(
        {"type": "webhook", "name": "hook", "url": thread_sink.url},
        {"type": "email", "name": "mail", "sender": "notices@example.jp"},
    )
    code, out, err = env.run("send-test", "bob", "--channel", "pager")
    assert code == 2 and out == ""
    assert "no channel 'pager'; configured: hook, mail" in err
    assert thread_sink.received == []


def test_send_test_email_without_an_address_exits_1(make_env: Callable[..., Env]) -> None:
    # port 9 (discard): were anything sent, the command would fail differently
    env = make_env({"type": "email", "name": "mail", "sender": "notices@example.jp", "port": 9})
    env.migrate()
    code, out, err = env.run("send-test", "bob", "--channel", "mail")
    assert code == 1 and out == ""
    assert "bob: no email address" in err
    assert "not delivered" not in err


def test_send_test_through_a_channel_that_cannot_be_built(
    make_env: Callable[..., Env],
) -> None:
    env = make_env({"type": "webhook", "name": "hook", "secret": "whsec_not base64!"})
    env.migrate()
    code, out, err = env.run("send-test", "bob", "--channel", "hook")
    assert code == 1 and out == ""
    assert "channel 'hook': secret:" in err and "check-config" in err


# -- check-config ---------------------------------------------------------------------------


def test_check_config_names_a_missing_command(make_env: Callable[..., Env]) -> None:
    missing = "/nonexistent/policy-server-test/notify-owner"
    env = make_env({"type": "command", "name": "script", "command": [missing, "--json"]})
    code, out, err = env.run("check-config")
    assert code == 1 and out == ""
    assert f"channels[0] (script): command {missing!r} not found" in err


def test_check_config_accepts_an_existing_command(make_env: Callable[..., Env]) -> None:
    env = make_env({"type": "command", "name": "script", "command": [sys.executable, "-c", ""]})
    code, out, err = env.run("check-config")
    # at most the note that a Country database places no login for impossible_travel
    assert code == 0 and all(line.startswith("  note: ") for line in err.splitlines())
    assert out.strip().endswith("OK")


def test_check_config_names_a_channel_that_cannot_be_built(make_env: Callable[..., Env]) -> None:
    env = make_env(
        {"type": "log", "name": "log"},
        {"type": "webhook", "name": "hook", "secret": "whsec_not base64!"},
    )
    code, _, err = env.run("check-config")
    assert code == 1
    assert "channels[1] (hook)" in err and "secret" in err


# -- the commands' own failures -------------------------------------------------------------


def test_invalid_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[channels]]\ntype = "webhook"\n', encoding="utf-8")
    assert main(["outbox", "counts", "-c", str(bad)]) == 1
    assert "channels[0].url" in capsys.readouterr().err


def test_unusable_store_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the store's directory cannot be made: a file is in the way
    (tmp_path / "var").write_text("not a directory", encoding="utf-8")
    store = tmp_path / "var" / "store.sqlite3"
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\npath = {_toml(str(store))}\n", encoding="utf-8")
    assert main(["outbox", "counts", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "store unavailable" in err and "Traceback" not in err
