"""The command line's structure: every command bound to a handler, ``-c/--config`` everywhere, the
store session, read-only commands that never migrate (SQLite and PostgreSQL), replay's spellings.

The commands' own behaviour is tested in test_admin_cli.py, test_history.py and test_breaker.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_history import LOGS, write_config
from test_store_contract import DSN, REQUIRE_POSTGRES, drop_schema, postgres_problem

from policy_server.commands import session
from policy_server.commands.cli import CommandError, load
from policy_server.commands.main import GROUPS, build_parser, main
from policy_server.commands.session import store_session
from policy_server.config import Config, StorageConfig, config_from_mapping
from policy_server.store import open_store
from policy_server.store.base import SchemaBehind, Store, StoreError

# every command line there is, as the parser knows it
COMMANDS = {
    ("serve",),
    ("worker",),
    ("migrate",),
    ("check-config",),
    ("lookup",),
    ("contacts", "import"),
    ("contacts", "show"),
    ("contacts", "remove"),
    ("outbox", "counts"),
    ("outbox", "list"),
    ("outbox", "show"),
    ("outbox", "retry"),
    ("outbox", "purge"),
    ("outbox", "held"),
    ("outbox", "release"),
    ("outbox", "discard"),
    ("pause",),
    ("resume",),
    ("breaker", "status"),
    ("breaker", "close"),
    ("history", "show"),
    ("history", "export"),
    ("history", "forget"),
    ("account",),
    ("blocks", "list"),
    ("blocks", "add"),
    ("blocks", "clear"),
    ("import-log",),
    ("replay",),
    ("send-test",),
}

# the commands that only read the store, with the arguments they need
READ_ONLY = [
    ["outbox", "counts"],
    ["outbox", "list"],
    ["outbox", "show", "some-id"],
    ["outbox", "held"],
    ["contacts", "show", "bob"],
    ["breaker", "status"],
    ["history", "show", "bob"],
    ["history", "export", "bob"],
    ["account", "bob"],
    ["blocks", "list"],
    ["send-test", "bob", "--channel", "log"],
]
READ_ONLY_IDS = [" ".join(command[:2]) for command in READ_ONLY]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command a command line can name: (its words, its parser)."""
    children = _subparsers(parser)
    if not children:
        yield path, parser
    for name, child in children.items():
        yield from leaves(child, (*path, name))


# -- the parser --------------------------------------------------------------------------------


def test_every_command_has_a_handler() -> None:
    found = dict(leaves(build_parser()))
    assert set(found) == COMMANDS
    for path, parser in found.items():
        handler = parser.get_default("handler")
        assert callable(handler), f"{' '.join(path)} has no handler"


def test_groups_have_no_handler_of_their_own() -> None:
    # `policy-server outbox` alone is a usage error, not a command
    root = build_parser()
    for name, parser in _subparsers(root).items():
        if _subparsers(parser):
            assert parser.get_default("handler") is None, name
    with pytest.raises(SystemExit) as exit_:
        main(["outbox"])
    assert exit_.value.code == 2


def test_each_group_registers_itself() -> None:
    for group in GROUPS:
        parser = argparse.ArgumentParser()
        group.register(parser.add_subparsers())
        assert _subparsers(parser), group.__name__


def readme_commands() -> list[tuple[str, ...]]:
    """The command lines README.md's command list shows, as the parser reads their words."""
    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = text.split("\n## Commands\n", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    found: list[tuple[str, ...]] = []
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or not words[0].endswith("bin/policy-server"):
            continue
        parser, path = build_parser(), ()
        for word in words[1:]:
            children = _subparsers(parser)
            if word not in children:
                break
            parser, path = children[word], (*path, word)
        found.append(path)
    return found


def test_the_readme_lists_every_command_there_is() -> None:
    listed = set(readme_commands())
    # each line names a whole command (a group alone is not one)...
    assert listed <= COMMANDS, f"not commands: {sorted(listed - COMMANDS)}"
    # ...and every command has a line
    assert listed >= COMMANDS, f"not in README.md: {sorted(COMMANDS - listed)}"


def test_dash_c_is_the_service_config_everywhere() -> None:
    for path, parser in leaves(build_parser()):
        (option,) = [a for a in parser._actions if "-c" in a.option_strings]
        assert option.option_strings == ["-c", "--config"], path
        assert option.dest == "config", path


def test_parsed_command_lines_carry_their_handler() -> None:
    parser = build_parser()
    found = dict(leaves(parser))
    for argv, path in (
        (["outbox", "counts", "-c", "x.toml"], ("outbox", "counts")),
        (["outbox", "release", "--login", "bob"], ("outbox", "release")),
        (["history", "forget", "bob"], ("history", "forget")),
        (["pause"], ("pause",)),
        (["replay", "--candidate", "new.toml", "log"], ("replay",)),
    ):
        args = parser.parse_args(argv)
        assert args.handler is found[path].get_default("handler")


# -- the store session ---------------------------------------------------------------------------


class Watched:
    """A real store whose closing is seen, and whose ``outbox_counts`` may be made to fail."""

    def __init__(self, store: Store, fail: bool) -> None:
        self._store = store
        self._fail = fail
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def outbox_counts(self) -> dict[str, int]:
        if self._fail:
            raise StoreError("disk I/O error")
        result: dict[str, int] = await self._store.outbox_counts()
        return result

    async def close(self) -> None:
        self.closed = True
        await self._store.close()


class Watch:
    """The stores the commands open; with ``fail`` set, the next ones fail."""

    def __init__(self) -> None:
        self.opened: list[Watched] = []
        self.fail = False


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    watch = Watch()

    async def opening(config: Any, migrate: bool = True) -> Any:
        store = Watched(await open_store(config, migrate=migrate), fail=watch.fail)
        watch.opened.append(store)
        return store

    monkeypatch.setattr(session, "open_store", opening)
    return watch


def sqlite_config(path: Path) -> Path:
    """A config of the store at ``path``, beside the directory ``path`` is in (or would be)."""
    conf = path.parent.parent / f"{path.parent.name}.toml"
    conf.write_text(
        f'[storage]\npath = "{path}"\ngroup_commit_wait_ms = 0\n'
        '[[channels]]\ntype = "log"\nname = "log"\n',
        encoding="utf-8",
    )
    return conf


def test_the_session_closes_the_store_when_the_command_fails(
    tmp_path: Path, watch: Watch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = sqlite_config(tmp_path / "s.sqlite3")
    assert main(["migrate", "-c", str(conf)]) == 0
    watch.fail = True
    capsys.readouterr()
    assert main(["outbox", "counts", "-c", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    said, problem = err.splitlines()
    assert said == f"store: sqlite {tmp_path / 's.sqlite3'}"
    assert problem == "policy-server: store unavailable: disk I/O error"
    assert [store.closed for store in watch.opened] == [True, True]


def test_the_session_closes_the_store_on_any_exception(tmp_path: Path) -> None:
    config = config_from_mapping({"storage": {"path": str(tmp_path / "s.sqlite3")}})
    seen: list[Store] = []

    async def failing() -> None:
        async with store_session(config, migrate=True) as store:
            seen.append(store)
            raise KeyError("not a store error")

    with pytest.raises(KeyError):
        asyncio.run(failing())

    async def still_usable() -> None:
        # closed: a second session opens the same file at once (nothing left locked or half-open)
        async with store_session(config) as store:
            assert await store.outbox_counts() == {}

    asyncio.run(still_usable())
    with pytest.raises(StoreError, match="not open"):
        asyncio.run(seen[0].outbox_counts())


def test_the_session_reports_a_store_error_as_one_line(tmp_path: Path) -> None:
    config = config_from_mapping({"storage": {"path": str(tmp_path / "s.sqlite3")}})

    async def failing() -> None:
        async with store_session(config, migrate=True):
            raise StoreError("database is locked")

    with pytest.raises(CommandError) as error:
        asyncio.run(failing())
    assert (str(error.value), error.value.status) == ("store unavailable: database is locked", 1)

    async def behind() -> None:
        async with store_session(config):
            pass

    (tmp_path / "s.sqlite3").unlink()
    with pytest.raises(CommandError) as error:
        asyncio.run(behind())
    assert isinstance(error.value.__cause__, SchemaBehind)
    assert "run `policy-server migrate`" in str(error.value)


@pytest.mark.parametrize(
    ("dsn", "said"),
    [
        (
            "postgresql://policy:s3cret@db.example.org:5433/policy",
            "postgres policy@db.example.org:5433/policy schema mail",
        ),
        ("postgres://db.example.org/policy", "postgres db.example.org/policy schema mail"),
        (
            "postgresql://policy:s3cret@db1:5432,db2:5432/policy?sslmode=require",
            "postgres policy@db1:5432,db2:5432/policy schema mail",
        ),
        (
            "postgresql:///policy?host=/run/postgresql&password=s3cret",
            "postgres /run/postgresql/policy schema mail",
        ),
        # not a URI: nothing of it is shown, since key=value text may hold the password
        ("host=db password=s3cret", "postgres (dsn is not a postgresql:// URI) schema mail"),
    ],
)
def test_the_store_line_never_shows_a_password(dsn: str, said: str) -> None:
    storage = StorageConfig(backend="postgres", dsn=dsn, schema="mail")
    assert session.store_label(storage) == said


def test_the_store_line_of_sqlite_is_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = StorageConfig(path="var/x.sqlite3")
    assert session.store_label(storage) == f"sqlite {tmp_path / 'var' / 'x.sqlite3'}"


def test_json_output_stays_json_with_the_store_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "var" / "store.sqlite3"
    conf = sqlite_config(store)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("login,email\nbob,bob@example.net\n", encoding="utf-8")
    assert main(["contacts", "import", str(contacts), "-c", str(conf)]) == 0
    capsys.readouterr()
    assert main(["history", "export", "bob", "-c", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["contact"]["email"] == "bob@example.net"
    assert err == f"store: sqlite {store}\n"


# -- read-only commands never migrate: SQLite ------------------------------------------------------


def sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    """Everything that makes the file's schema: its objects and its recorded versions."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        tables = {row[1] for row in objects}
        versions = (
            conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
            if "schema_version" in tables
            else []
        )
    return [*objects, *versions]


def old_sqlite_store(path: Path) -> int:
    """A store written by the previous version: every migration but the newest; its version."""
    folder = resources.files("policy_server.store").joinpath("migrations", "sqlite")
    scripts = sorted(
        (int(entry.name[:4]), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    assert len(scripts) >= 2
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied REAL)")
        for version, script in scripts[:-1]:
            conn.executescript(
                f"BEGIN;\n{script}\nINSERT INTO schema_version VALUES ({version}, 0);\nCOMMIT;"
            )
    return scripts[-2][0]


@pytest.mark.parametrize("command", READ_ONLY, ids=READ_ONLY_IDS)
def test_read_only_commands_create_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    store = tmp_path / "var" / "store.sqlite3"
    conf = sqlite_config(store)
    assert main([*command, "-c", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    # which store it looked for, then what is wrong with it
    said, problem = err.splitlines()
    assert said == f"store: sqlite {store}"
    assert problem.startswith(f"policy-server: the SQLite store {store} is not set up yet; ")
    assert problem.endswith(": run `policy-server migrate`")
    # neither the file nor its directory
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("command", READ_ONLY, ids=READ_ONLY_IDS)
def test_read_only_commands_leave_an_old_schema_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    store = tmp_path / "store.sqlite3"
    conf = sqlite_config(store)
    version = old_sqlite_store(store)
    before = sqlite_schema(store)
    assert main([*command, "-c", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"is at schema version {version};" in err and "run `policy-server migrate`" in err
    assert err.splitlines()[0] == f"store: sqlite {store}" and len(err.splitlines()) == 2
    assert sqlite_schema(store) == before
    # what the message says to do makes the command work
    assert main(["migrate", "-c", str(conf)]) == 0
    assert sqlite_schema(store) != before
    capsys.readouterr()
    main([*command, "-c", str(conf)])
    assert "migrate" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["contacts", "remove", "bob"],
        ["outbox", "retry", "some-id"],
        ["outbox", "purge", "--older-than", "30d"],
        ["outbox", "release"],
        ["outbox", "discard"],
        ["pause"],
        ["resume"],
        ["breaker", "close"],
        ["history", "forget", "bob"],
        ["account", "bob", "--notices", "off"],
        ["migrate"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_commands_that_write_bring_the_schema_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    store = tmp_path / "store.sqlite3"
    conf = sqlite_config(store)
    old_sqlite_store(store)
    main([*command, "-c", str(conf)])
    assert "migrate" not in capsys.readouterr().err
    assert main(["outbox", "counts", "-c", str(conf)]) == 0


# -- read-only commands never migrate: PostgreSQL --------------------------------------------------


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema name of its own, dropped afterwards; the test skips without PostgreSQL."""
    problem = asyncio.run(postgres_problem())
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{problem} (POLICY_SERVER_REQUIRE_POSTGRES=1)")
        pytest.skip(problem)
    schema = f"t_{secrets.token_hex(8)}"
    try:
        yield schema
    finally:
        asyncio.run(drop_schema(schema))


def pg_config(tmp_path: Path, schema: str) -> Path:
    conf = tmp_path / "pg.toml"
    conf.write_text(
        f'[storage]\nbackend = "postgres"\ndsn = "{DSN}"\nschema = "{schema}"\n'
        '[[channels]]\ntype = "log"\nname = "log"\n',
        encoding="utf-8",
    )
    return conf


def pg_state(schema: str) -> tuple[bool, list[str], list[int]]:
    """(whether the schema exists, its tables, its recorded versions)."""

    async def read() -> tuple[bool, list[str], list[int]]:
        import asyncpg

        conn = await asyncpg.connect(DSN, timeout=10)
        try:
            exists = bool(
                await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
            )
            tables = [
                row[0]
                for row in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
                )
            ]
            versions = []
            if "schema_version" in tables:
                versions = [
                    row[0]
                    for row in await conn.fetch(
                        f'SELECT version FROM "{schema}".schema_version ORDER BY 1'
                    )
                ]
            return exists, tables, versions
        finally:
            await conn.close()

    return asyncio.run(read())


def pg_execute(statement: str) -> None:
    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(DSN, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("command", READ_ONLY, ids=READ_ONLY_IDS)
def test_read_only_commands_create_no_postgres_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_schema: str, command: list[str]
) -> None:
    conf = pg_config(tmp_path, pg_schema)
    assert main([*command, "-c", str(conf)]) == 1
    err = capsys.readouterr().err
    assert f"the PostgreSQL store (schema {pg_schema}) is not set up yet" in err
    assert "run `policy-server migrate`" in err and len(err.splitlines()) == 2
    said = err.splitlines()[0]
    assert said.startswith("store: postgres ") and said.endswith(f" schema {pg_schema}")
    host = urlsplit(DSN).hostname
    assert host is not None and host in said
    assert pg_state(pg_schema) == (False, [], [])


def test_read_only_commands_leave_postgres_schemas_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_schema: str
) -> None:
    conf = pg_config(tmp_path, pg_schema)
    # made by the DBA, empty: nothing is created in it
    pg_execute(f'CREATE SCHEMA "{pg_schema}"')
    for command in READ_ONLY:
        assert main([*command, "-c", str(conf)]) == 1, command
        assert "run `policy-server migrate`" in capsys.readouterr().err
    assert pg_state(pg_schema) == (True, [], [])
    # a version table older than the newest migration: still left as it is
    pg_execute(
        f'CREATE TABLE "{pg_schema}".schema_version'
        " (version integer PRIMARY KEY, applied double precision NOT NULL)"
    )
    assert main(["outbox", "counts", "-c", str(conf)]) == 1
    assert "run `policy-server migrate`" in capsys.readouterr().err
    assert pg_state(pg_schema) == (True, ["schema_version"], [])
    pg_execute(f'DROP TABLE "{pg_schema}".schema_version')
    # what the message says to do makes them work
    assert main(["migrate", "-c", str(conf)]) == 0
    exists, tables, versions = pg_state(pg_schema)
    assert exists and "deliveries" in tables and versions
    capsys.readouterr()
    for command in READ_ONLY:
        main([*command, "-c", str(conf)])
        assert "migrate" not in capsys.readouterr().err, command
    assert main(["outbox", "counts", "-c", str(conf)]) == 0
    assert pg_state(pg_schema) == (exists, tables, versions)


# -- replay: the candidate's new name and the old spelling -----------------------------------------


@pytest.fixture
def replay_configs_(tmp_path: Path, geo_files: dict[str, Path]) -> tuple[str, str]:
    """(current, candidate): the candidate notifies only new countries and providers."""
    current = write_config(tmp_path / "current.toml", geo_files, tmp_path / "live.sqlite3")
    candidate = write_config(
        tmp_path / "candidate.toml",
        geo_files,
        tmp_path / "live.sqlite3",
        '[policy]\nnotify = ["new_country", "new_provider"]\n',
    )
    return str(current), str(candidate)


def _replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()
    code = main(["replay", *args, str(LOGS), "--json", "--log-timezone", "Asia/Tokyo"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}, err


@pytest.mark.parametrize(
    "spelling",
    [
        ["--candidate", "{new}", "-c", "{cur}"],
        ["-c", "{cur}", "--candidate", "{new}"],
        ["--config", "{cur}", "--candidate", "{new}"],
        ["--candidate={new}", "--config={cur}"],
    ],
    ids=["candidate-c", "c-candidate", "candidate-config", "with-equals"],
)
def test_replay_candidate(
    capsys: pytest.CaptureFixture[str], replay_configs_: tuple[str, str], spelling: list[str]
) -> None:
    current, candidate = replay_configs_
    args = [word.format(new=candidate, cur=current) for word in spelling]
    code, document, err = _replay(capsys, *args)
    assert code == 0
    # each config runs in a throw-away store of its own, never the live one
    assert replay_stores(err) == 2
    assert (document["current"]["notices"], document["candidate"]["notices"]) == (4, 1)


@pytest.mark.parametrize(
    "spelling",
    [
        ["--config", "{new}", "-c", "{cur}"],
        ["-c", "{cur}", "--config", "{new}"],
        ["--config", "{new}", "--current", "{cur}"],
    ],
    ids=["config-c", "c-config", "config-current"],
)
def test_replay_old_spelling_warns_and_works(
    capsys: pytest.CaptureFixture[str], replay_configs_: tuple[str, str], spelling: list[str]
) -> None:
    current, candidate = replay_configs_
    args = [word.format(new=candidate, cur=current) for word in spelling]
    code, document, err = _replay(capsys, *args)
    assert code == 0
    # the same figures as the new spelling: --config still names the candidate here
    assert (document["current"]["notices"], document["candidate"]["notices"]) == (4, 1)
    assert replay_stores(err) == 2
    (warning,) = [line for line in err.splitlines() if not line.startswith("store: ")]
    assert warning.startswith("policy-server: warning:")
    assert "deprecated" in warning and "--candidate NEW.toml" in warning


def replay_stores(err: str) -> int:
    """How many throw-away stores replay said it opened; it opens no other."""
    said = [line for line in err.splitlines() if line.startswith("store: ")]
    assert all(
        re.fullmatch(r"store: sqlite .*/policy-server-replay-[^/]+/replay\.sqlite3", line)
        for line in said
    ), said
    return len(said)


def test_replay_without_a_candidate_exits_2(
    capsys: pytest.CaptureFixture[str], replay_configs_: tuple[str, str]
) -> None:
    current, _ = replay_configs_
    code, _, err = _replay(capsys, "-c", current)
    assert code == 2
    assert err == "policy-server: replay: name the config to try with --candidate NEW.toml\n"


def test_replay_reports_both_invalid_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[channels]]\ntype = "webhook"\n', encoding="utf-8")
    code, _, err = _replay(capsys, "--candidate", str(bad), "-c", str(bad))
    assert code == 1
    assert err.count(f"policy-server: invalid config {bad}:") == 2
    assert "channels[0].url" in err


def test_replay_help_names_the_candidate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = capsys.readouterr().out
    assert "--candidate NEW.toml" in text and "the config in use" in text
    assert "--current" not in text


def test_an_invalid_config_is_a_command_error(tmp_path: Path) -> None:
    # what every command loads -c/--config with
    assert isinstance(load(None), Config)
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nbackend = 3\n", encoding="utf-8")
    with pytest.raises(CommandError, match="invalid config"):
        load(str(bad))


def test_a_command_leaves_the_logging_as_it_found_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # migrate logs its steps at info on the stderr of its call, and only there
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    conf = sqlite_config(tmp_path / "s.sqlite3")
    assert main(["migrate", "-c", str(conf)]) == 0
    assert "applying schema migration" in capsys.readouterr().err
    assert (root.handlers, root.level) == (handlers, level)
