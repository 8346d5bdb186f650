"""The config file: defaults, validation with key paths, the documented example, check-config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from policy_server.commands.main import main
from policy_server.config import (
    CommandChannelConfig,
    Config,
    ConfigError,
    EmailChannelConfig,
    LogChannelConfig,
    SmsChannelConfig,
    WebhookChannelConfig,
    config_from_mapping,
    load_config,
)

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "conf" / "policy-server.toml"


def test_embedded_defaults() -> None:
    config = load_config(None)
    assert config.server.listen == "127.0.0.1:4001"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 4001)
    assert config.server.max_body_bytes == 64 * 1024
    assert config.geoip.bundled is True
    assert config.storage.path == "var/policy-server.sqlite3"
    assert config.message.language == "ja" and config.message.timezone == "Asia/Tokyo"
    assert [c.type for c in config.channels] == ["log"]


def test_contract_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
[server]
listen = "127.0.0.1:4101"
api_header = "X-API-Key: secret"
[geoip]
country_db = "path/to/GeoLite2-Country.mmdb"
asn_db = "path/to/ipasn.dat"
[storage]
path = "var/x.sqlite3"
[[channels]]
type = "webhook"
url = "http://127.0.0.1:9000/notify"
secret = "optional signing secret"
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.server.port == 4101
    channel = config.channels[0]
    assert isinstance(channel, WebhookChannelConfig)
    assert channel.secret == "optional signing secret"
    assert channel.name == "webhook-0"


def errors_of(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data)
    return dict(err.value.errors)


def test_errors_name_the_key_path() -> None:
    errors = errors_of(
        {
            "server": {"listen": "nowhere", "max_body_bytes": "big"},
            "message": {"timezone": "Mars/Olympus"},
            "channels": [{"type": "webhook", "url": "ftp://x"}, {"type": "pigeon"}],
            "policy": {"notify": ["first_use", "bad_reason"]},
            "mystery": 1,
        }
    )
    assert "server.listen" in errors
    assert "server.max_body_bytes" in errors
    assert "message.timezone" in errors and "Mars/Olympus" in errors["message.timezone"]
    assert "channels[0].url" in errors
    assert any(key.startswith("channels[1]") for key in errors)
    assert "policy.notify[1]" in errors
    assert errors["mystery"] == "unknown key"


def test_duplicate_channel_names_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(
            {"channels": [{"type": "log", "name": "a"}, {"type": "log", "name": "a"}]}
        )
    assert "duplicate channel name" in str(err.value)


def test_ipv6_listen() -> None:
    config = config_from_mapping({"server": {"listen": "[::1]:4001"}})
    assert (config.server.host, config.server.port) == ("::1", 4001)


def _documented_keys(model: type[BaseModel], prefix: str) -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _documented_keys(annotation, f"{name}.")
        elif name != "channels":
            keys.add(prefix + name)
    return keys


def test_example_file_documents_every_key_and_loads() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    config = load_config(EXAMPLE)
    assert config == Config()  # the example shows the defaults
    sections: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
        elif m := re.match(r"^#?\s*(\w+) = ", line):
            sections.setdefault(section, set()).add(m.group(1))
    documented = {f"{s}.{k}" for s, keys in sections.items() for k in keys}
    missing = _documented_keys(Config, "") - documented
    assert not missing, f"keys not documented in {EXAMPLE.name}: {sorted(missing)}"
    channel_keys = {
        key
        for model in (
            LogChannelConfig,
            WebhookChannelConfig,
            EmailChannelConfig,
            SmsChannelConfig,
            CommandChannelConfig,
        )
        for key in model.model_fields
    }
    missing_channel = {k for k in channel_keys if f"# {k} = " not in text}
    assert not missing_channel


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_reports_key_paths_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "x"\n[[channels]]\ntype = "webhook"\n', encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "policy_server", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "server.listen" in run.stderr
    assert "channels[0].url" in run.stderr


def test_check_config_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n", encoding="utf-8")
    assert main(["check-config", "-c", str(bad)]) == 1
    assert "invalid TOML" in capsys.readouterr().err


def test_check_config_missing_geo_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[geoip]\ncountry_db = "/nonexistent/x.mmdb"\n', encoding="utf-8")
    assert main(["check-config", "-c", str(path)]) == 1
    assert "geoip.country_db" in capsys.readouterr().err


def test_log_channel_default_name() -> None:
    config = config_from_mapping({"channels": [{"type": "log"}]})
    assert isinstance(config.channels[0], LogChannelConfig)
    assert config.channels[0].name == "log-0"
