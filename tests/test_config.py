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
    resolve_paths,
)

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "conf" / "policy-server.toml"


def test_embedded_defaults() -> None:
    config = load_config(None)
    assert config.server.listen == "127.0.0.1:4001"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 4001)
    assert config.server.max_body_bytes == 64 * 1024
    assert config.geoip.bundled is True
    # relative to the current directory, made absolute when loaded (test_config_paths.py)
    assert config.storage.path == str(Path.cwd() / "var" / "policy-server.sqlite3")
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
    # the example shows the defaults (its relative paths taken from its own directory)
    assert config == resolve_paths(Config(), EXAMPLE.parent)
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


# -- listen addresses ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["server", "metrics"])
@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("999.1.1.1:4001", "999.1.1.1 is not an IPv4 address"),
        ("10.0.0:4001", "10.0.0 is not an IPv4 address"),
        ("::1:4001", "an IPv6 address goes in brackets, as in [::1]:4001"),
        ("[::g]:4001", "[::g] is not an IPv6 address"),
        ("mail host:4001", "'mail host' is neither an IP address nor a host name"),
        ("-mail:4001", "'-mail' is neither an IP address nor a host name"),
        ("127.0.0.1:99999", "port must be between 1 and 65535"),
        ("127.0.0.1:", "must be host:port"),
    ],
)
def test_a_listen_address_that_cannot_be_bound_is_refused(
    key: str, listen: str, expected: str
) -> None:
    errors = errors_of({key: {"listen": listen}})
    assert expected in errors[f"{key}.listen"]


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("0.0.0.0:4001", "0.0.0.0"),
        ("[::]:4001", "::"),
        ("localhost:4001", "localhost"),
        ("policy.mail.example.org.:4001", "policy.mail.example.org."),
        ("policy_server:4001", "policy_server"),  # container names
    ],
)
def test_listen_addresses_and_host_names(listen: str, host: str) -> None:
    config = config_from_mapping({"server": {"listen": listen}})
    assert (config.server.host, config.server.port) == (host, 4001)


def test_check_config_resolves_listen_host_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # .invalid never resolves (RFC 2606)
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nlisten = "policy.invalid:4001"\n[metrics]\nlisten = "localhost:9490"\n',
        encoding="utf-8",
    )
    assert main(["check-config", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "server.listen: cannot resolve policy.invalid" in err
    assert "metrics.listen" not in err


def test_check_config_checks_the_pages_listener_and_the_response_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:4001"\n'
        '[web]\nlisten = "127.0.0.1:4001"\npublic_url = "https://mail.example.com/notice"\n'
        f'secret = "{"k" * 32}"\n'
        '[response]\ncommand = ["/nonexistent/kick-account", "--now"]\n',
        encoding="utf-8",
    )
    assert main(["check-config", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "web.listen: 127.0.0.1:4001 is also server.listen" in err
    assert "response.command: '/nonexistent/kick-account' not found or not executable" in err
    assert "k" * 32 not in err


# -- geo files -------------------------------------------------------------------------------


def _check_geo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], **geoip: Path
) -> tuple[int, str]:
    path = tmp_path / "geo.toml"
    lines = ["[geoip]", *(f'{key} = "{value}"' for key, value in geoip.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["check-config", "-c", str(path)])
    return code, capsys.readouterr().err


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    # what /etc/hostname holds
    path = tmp_path / "hostname"
    path.write_text("mail1\n", encoding="utf-8")
    return path


def test_check_config_refuses_a_country_db_that_is_no_maxmind_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text_file: Path
) -> None:
    code, err = _check_geo(tmp_path, capsys, country_db=text_file)
    assert code == 1
    assert f"geoip.country_db: {text_file} is not a MaxMind DB file" in err


def test_check_config_refuses_an_asn_database_as_country_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], geo_files: dict[str, Path]
) -> None:
    code, err = _check_geo(tmp_path, capsys, country_db=geo_files["asn_mmdb"])
    assert code == 1
    assert f"geoip.country_db: {geo_files['asn_mmdb']}: GeoLite2-ASN" in err
    assert "not a Country or City database" in err


def test_check_config_refuses_an_asn_db_that_is_neither_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text_file: Path
) -> None:
    code, err = _check_geo(tmp_path, capsys, asn_db=text_file)
    assert code == 1
    assert (
        f"geoip.asn_db: {text_file} is neither a MaxMind ASN database (.mmdb)"
        " nor a pyasn file (ipasn.dat, plain or .gz)"
    ) in err


def test_check_config_refuses_a_country_database_as_asn_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], geo_files: dict[str, Path]
) -> None:
    code, err = _check_geo(tmp_path, capsys, asn_db=geo_files["country_mmdb"])
    assert code == 1
    assert "geoip.asn_db:" in err and "is not an ASN database" in err


def test_check_config_refuses_an_empty_asn_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "ipasn.dat"
    empty.write_bytes(b"")
    code, err = _check_geo(tmp_path, capsys, asn_db=empty)
    assert code == 1
    assert f"geoip.asn_db: {empty} is empty" in err


def test_check_config_refuses_asn_names_that_are_not_json(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    geo_files: dict[str, Path],
    text_file: Path,
) -> None:
    code, err = _check_geo(tmp_path, capsys, asn_db=geo_files["ipasn"], asn_names=text_file)
    assert code == 1
    assert f"geoip.asn_names: {text_file} is not a JSON object of AS names" in err


def test_check_config_refuses_a_directory_as_geo_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _check_geo(tmp_path, capsys, country_db=tmp_path)
    assert code == 1
    assert f"geoip.country_db: no such file {str(tmp_path)!r}" in err


@pytest.mark.parametrize(
    ("country", "asn"),
    [("country_mmdb", "asn_mmdb"), ("city_mmdb", "ipasn")],
)
def test_check_config_accepts_the_geo_files_the_service_reads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    geo_files: dict[str, Path],
    country: str,
    asn: str,
) -> None:
    names = {"asn_names": geo_files["asn_names"]} if asn == "ipasn" else {}
    code, err = _check_geo(
        tmp_path, capsys, country_db=geo_files[country], asn_db=geo_files[asn], **names
    )
    # at most the note that a Country database places no login for impossible_travel
    assert code == 0 and all(line.startswith("  note: ") for line in err.splitlines())


WEB_SECRET = "an-hmac-key-for-the-links-0123456789"


def web_errors(**web: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"web": web})
    return info.value.errors


def test_web_defaults_have_no_links() -> None:
    web = Config().web
    assert (web.listen, web.public_url, web.link_days) == ("", "", 7)
    assert web.secret.get_secret_value() == "" and not web.links_on


def test_web_section_loads() -> None:
    config = config_from_mapping(
        {
            "web": {
                "listen": "[::1]:4010",
                "public_url": "https://mail.example.com/notice",
                "secret": WEB_SECRET,
                "link_days": 30,
            }
        }
    )
    assert config.web.links_on and config.web.link_days == 30
    assert config.web.secret.get_secret_value() == WEB_SECRET
    # links without pages of our own (another server shows them) are fine
    assert config_from_mapping(
        {"web": {"public_url": "http://127.0.0.1:8080/n", "secret": WEB_SECRET}}
    ).web.links_on


def test_web_validation_errors() -> None:
    assert web_errors(public_url="https://mail.example.com/notice") == [
        (
            "web",
            "secret is required when public_url is set (the key the links are signed with,"
            " at least 32 characters)",
        )
    ]
    [(path, message)] = web_errors(secret=WEB_SECRET)
    assert path == "web" and message.startswith("public_url is required when secret is set")
    [(path, message)] = web_errors(listen="127.0.0.1:4010")
    assert path == "web" and message.startswith("public_url is required when listen is set")
    [(path, message)] = web_errors(public_url="https://mail.example.com/n", secret="short-one")
    assert path == "web.secret" and "at least 32 characters" in message
    for url in (
        "mail.example.com/notice",
        "ftp://mail.example.com/notice",
        "https://",
        "https://mail.example.com:99999/n",
        "https://mail example.com/n",
    ):
        [(path, message)] = web_errors(public_url=url, secret=WEB_SECRET)
        assert path == "web.public_url" and "http:// or https:// URL" in message, url
    for url in (
        "https://mail.example.com/n?x=1",
        "https://mail.example.com/n#top",
        "https://u@m.jp/",
    ):
        [(path, message)] = web_errors(public_url=url, secret=WEB_SECRET)
        assert path == "web.public_url" and "plain base URL" in message, url
    [(path, _)] = web_errors(listen="nowhere", public_url="https://m.jp/n", secret=WEB_SECRET)
    assert path == "web.listen"
    for days in (0, 91):
        [(path, _)] = web_errors(public_url="https://m.jp/n", secret=WEB_SECRET, link_days=days)
        assert path == "web.link_days"


def test_web_secret_is_never_shown(tmp_path: Path) -> None:
    short = "s3cr3t-but-too-short"
    errors = web_errors(public_url="https://m.jp/n", secret=short)
    assert short not in str(errors)
    config = config_from_mapping({"web": {"public_url": "https://m.jp/n", "secret": WEB_SECRET}})
    assert WEB_SECRET not in repr(config) and WEB_SECRET not in str(config.model_dump())
    conf = tmp_path / "c.toml"
    conf.write_text(f'[web]\npublic_url = "ftp://x"\nsecret = "{short}"\n', encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "policy_server", "check-config", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "web.secret" in run.stdout + run.stderr
    assert short not in run.stdout + run.stderr


def test_check_config_notes_that_travel_needs_a_city_database(
    tmp_path: Path, geo_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def check(country: Path, extra: str = "") -> str:
        conf = tmp_path / "c.toml"
        conf.write_text(
            f'[geoip]\ncountry_db = "{country}"\nbundled = false\n{extra}', encoding="utf-8"
        )
        assert main(["check-config", "-c", str(conf)]) == 0
        return capsys.readouterr().err

    assert "impossible_travel needs a City database" in check(geo_files["country_mmdb"])
    assert "GeoLite2-Country" in check(geo_files["country_mmdb"])
    assert check(geo_files["city_mmdb"]) == ""
    assert check(geo_files["country_mmdb"], "[policy]\nmax_speed_kmh = 0\n") == ""
