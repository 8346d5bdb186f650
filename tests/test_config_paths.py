"""Relative paths in the config: taken from the config file's directory (from the current
directory with the embedded defaults), one rule for every key that names a file, and every
command saying which store it opened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policy_server.config import (
    CommandChannelConfig,
    Config,
    load_config,
    path_keys,
    resolve_paths,
)

CONFIG = """
[geoip]
country_db = "geo/country.mmdb"
asn_db = "../shared/ipasn.dat"
asn_names = "/srv/geo/asnames.json"
[storage]
path = "var/store.sqlite3"
[networks]
files = ["lists/vpn.txt", "/etc/policy-server/hosting.txt"]
[privacy]
events_path = "log/events.jsonl"
[message]
templates_dir = "templates"
[[channels]]
type = "command"
name = "local-script"
command = ["bin/notify-owner", "--json", "relative/argument"]
[[channels]]
type = "command"
name = "on-path"
command = ["notify-owner"]
"""


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``policy-server ARGS`` as an operator runs it, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "policy_server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )


def test_relative_paths_are_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "policy-server"
    conf_dir.mkdir(parents=True)
    (conf_dir / "policy-server.toml").write_text(CONFIG, encoding="utf-8")
    elsewhere = tmp_path / "home" / "operator"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)

    # named relative to the current directory, as an operator would type it
    config = load_config(Path("../../etc/policy-server/policy-server.toml"))

    assert config.geoip.country_db == str(conf_dir / "geo" / "country.mmdb")
    assert config.geoip.asn_db == str(tmp_path / "etc" / "shared" / "ipasn.dat")
    assert config.geoip.asn_names == "/srv/geo/asnames.json"  # absolute: as written
    assert config.storage.path == str(conf_dir / "var" / "store.sqlite3")
    assert config.networks.files == (
        str(conf_dir / "lists" / "vpn.txt"),
        "/etc/policy-server/hosting.txt",
    )
    assert config.privacy.events_path == str(conf_dir / "log" / "events.jsonl")
    assert config.message.templates_dir == str(conf_dir / "templates")
    script, on_path = config.channels
    assert isinstance(script, CommandChannelConfig) and isinstance(on_path, CommandChannelConfig)
    # a program named with a directory is a file; its arguments are the program's business
    assert script.command == (
        str(conf_dir / "bin" / "notify-owner"),
        "--json",
        "relative/argument",
    )
    # a bare program name is looked up on PATH, as before
    assert on_path.command == ("notify-owner",)


def test_empty_paths_stay_empty(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[storage]\npath = "s.sqlite3"\n', encoding="utf-8")
    config = load_config(conf)
    assert config.geoip.country_db == config.geoip.asn_db == ""
    assert config.privacy.events_path == "" and config.message.templates_dir == ""
    assert config.networks.files == ()


def test_embedded_defaults_are_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.storage.path == str(tmp_path / "var" / "policy-server.sqlite3")
    # the model itself keeps the documented, relative default
    assert Config().storage.path == "var/policy-server.sqlite3"


def test_every_key_that_names_a_file_follows_the_rule() -> None:
    # a new key naming a file must be marked as one (FilePath) to be resolved like these
    assert set(path_keys()) == {
        "geoip.country_db",
        "geoip.asn_db",
        "geoip.asn_names",
        "storage.path",
        "networks.files",
        "privacy.events_path",
        "message.templates_dir",
        "channels[].command[0]",
        "response.command[0]",
    }


def test_resolving_twice_changes_nothing(tmp_path: Path) -> None:
    once = resolve_paths(Config(), tmp_path)
    assert resolve_paths(once, tmp_path / "elsewhere") == once


def test_an_operator_command_run_elsewhere_opens_the_configured_store(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = conf_dir / "policy-server.toml"
    conf.write_text(
        '[storage]\npath = "var/store.sqlite3"\n[[channels]]\ntype = "log"\nname = "log"\n',
        encoding="utf-8",
    )
    contacts = conf_dir / "contacts.csv"
    contacts.write_text("login,email\ntaro@example.jp,taro@example.net\n", encoding="utf-8")
    store = conf_dir / "var" / "store.sqlite3"

    # written from the config's own directory...
    imported = run(conf_dir, "contacts", "import", "contacts.csv", "-c", "policy-server.toml")
    assert imported.returncode == 0, imported.stderr
    assert store.is_file()

    # ...and read from anywhere else
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = run(elsewhere, "contacts", "show", "taro@example.jp", "-c", str(conf))
    assert shown.returncode == 0, shown.stderr
    assert "taro@example.net" in shown.stdout
    assert shown.stderr.splitlines()[0] == f"store: sqlite {store}"
    # no second, empty store next to the operator
    assert list(elsewhere.iterdir()) == []


def test_the_embedded_defaults_say_which_store_they_mean(tmp_path: Path) -> None:
    found = run(tmp_path, "outbox", "counts")
    # nothing set up here: the command says where it looked, and what to do
    assert found.returncode == 1
    first, *rest = found.stderr.splitlines()
    assert first == f"store: sqlite {tmp_path / 'var' / 'policy-server.sqlite3'}"
    assert "policy-server migrate" in "\n".join(rest)
    assert list(tmp_path.iterdir()) == []
