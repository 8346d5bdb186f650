"""The wire format: real captured bodies, Dovecot 2.3's quirks, and refused input."""

from __future__ import annotations

import contextlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import captures

from policy_server.model import Command
from policy_server.protocol import ProtocolError, parse_request

CAPTURED = captures()


def command_of(target: str) -> str:
    return parse_qs(urlsplit(target).query)["command"][0]


def test_every_captured_body_parses() -> None:
    assert len(CAPTURED) >= 90
    for capture in CAPTURED:
        event = parse_request(command_of(capture["target"]), capture["body"].encode())
        raw = json.loads(capture["body"])
        assert event.command is Command(command_of(capture["target"]))
        assert event.login == raw["login"]
        assert event.remote == raw["remote"]
        assert event.protocol == raw["protocol"]
        assert event.tls is False or event.tls is True
        if event.command is Command.REPORT:
            assert event.success is raw["success"]
            assert event.policy_reject is raw["policy_reject"]
        else:
            assert event.success is None
        assert "pwhash" not in event.attributes


def test_captured_success_and_failure_reports() -> None:
    by_scenario = {
        (c["scenario"], command_of(c["target"])): c for c in CAPTURED if "report" in c["target"]
    }
    ok = by_scenario[("imap_success", "report")]
    bad = by_scenario[("imap_wrong_password", "report")]
    assert parse_request("report", ok["body"].encode()).success is True
    assert parse_request("report", bad["body"].encode()).success is False


def test_captured_ipv6_forwarded_address() -> None:
    body = next(
        c["body"]
        for c in CAPTURED
        if c["scenario"] == "imap_id_forward_v6" and "report" in c["target"]
    )
    event = parse_request("report", body.encode())
    assert ":" in event.remote


def test_nested_group_is_kept_as_attribute() -> None:
    body = next(c["body"] for c in CAPTURED if c["scenario"] == "imap_success")
    event = parse_request("allow", body.encode())
    assert event.attributes["extra"] == {"service": "imap", "session_pid": ""}


def test_duplicate_tls_key_last_one_wins() -> None:
    body = next(c["body"] for c in CAPTURED if c["scenario"] == "imap_tls_key_collision")
    assert body.count('"tls":') == 2
    event = parse_request("allow", body.encode())
    assert event.tls is False


def test_multi_level_keys_invalid_json_gets_a_clear_error() -> None:
    # What Dovecot 2.3 sends for auth_policy_request_attributes "a/b/c=1 a/b/d=2 a/e=3 ...".
    body = (
        b'{"a":{"b":{"b/c":"1","b/d":"2","e":"3"},"login":"alice","protocol":"imap",'
        b'"remote":"203.0.113.7","tls":false}'
    )
    with pytest.raises(ProtocolError) as err:
        parse_request("report", body)
    assert err.value.code == "invalid_json"
    assert "more than one '/'" in err.value.detail


# What Dovecot 2.4.1 sends with the attribute block of dovecot-example.conf (IMAP, a report),
# and with pwhash left in (Dovecot's default list).
DOVECOT24_REPORT = (
    b'{"device_id":"\\"name\\" \\"BarClient\\"","fail_type":"","login":"dave@example.jp",'
    b'"protocol":"imap","pwhash":"0f8b","remote":"203.0.113.9","session_id":"7F+X859htrx/AAAB",'
    b'"success":true,"policy_reject":false,"tls":false}'
)


def test_dovecot24_report() -> None:
    event = parse_request("report", DOVECOT24_REPORT)
    assert (event.login, event.remote, event.protocol) == ("dave@example.jp", "203.0.113.9", "imap")
    assert (event.success, event.policy_reject, event.tls) == (True, False, False)
    assert event.session_id == "7F+X859htrx/AAAB"
    assert event.device_id == '"name" "BarClient"'
    assert event.fail_type == ""
    assert event.attributes == {}
    assert event.repairs == ()


def test_dovecot24_failed_login_carries_fail_type() -> None:
    body = DOVECOT24_REPORT.replace(b'"fail_type":""', b'"fail_type":"credentials"').replace(
        b'"success":true', b'"success":false'
    )
    event = parse_request("report", body)
    assert (event.success, event.fail_type) == (False, "credentials")


def test_dovecot24_doveadm_auth_test_sends_empty_session_and_device() -> None:
    body = (
        b'{"device_id":"","fail_type":"","login":"u","protocol":"doveadm",'
        b'"remote":"192.0.2.1","session_id":"","success":true,"policy_reject":false,"tls":false}'
    )
    event = parse_request("report", body)
    assert (event.session_id, event.device_id, event.protocol) == ("", "", "doveadm")


def test_dovecot24_nested_group_attributes_are_found() -> None:
    # Dovecot 2.4 for the attribute keys a/b/c, a/b/d, a/e, login, ...: valid JSON, but every
    # attribute after the two-level key sits inside the group "a".
    body = (
        b'{"a":{"b":{"c":"1","d":"2"},"e":"3","login":"dave","protocol":"imap",'
        b'"pwhash":"0f8b","remote":"203.0.113.9","session_id":"s1"},'
        b'"success":true,"policy_reject":false,"tls":true}'
    )
    event = parse_request("report", body)
    assert (event.login, event.remote, event.protocol, event.session_id) == (
        "dave",
        "203.0.113.9",
        "imap",
        "s1",
    )
    assert (event.success, event.tls) == (True, True)
    assert len(event.repairs) == 1
    assert "more than one '/'" in event.repairs[0]
    assert "pwhash" not in json.dumps(event.attributes)
    assert event.attributes["a"]["b"] == {"c": "1", "d": "2"}


def test_nested_group_never_overrides_top_level_attributes() -> None:
    body = (
        b'{"login":"dave","protocol":"imap","remote":"203.0.113.9",'
        b'"x":{"y":{"z":"1"},"login":"mallory"},"success":true,"tls":false}'
    )
    event = parse_request("report", body)
    assert event.login == "dave"
    assert event.repairs == ()


@pytest.mark.parametrize(
    ("command", "body", "code"),
    [
        ("allow", b"", "empty_body"),
        ("allow", b"not json", "invalid_json"),
        ("allow", b'["login"]', "not_an_object"),
        ("allow", b'"text"', "not_an_object"),
        ("allow", b"\xff\xfe{}", "invalid_utf8"),
        ("allow", b'{"remote":"203.0.113.7"}', "missing_login"),
        ("allow", b'{"login":"  ","remote":"203.0.113.7"}', "missing_login"),
        ("allow", b'{"login":"alice"}', "missing_remote"),
        ("allow", b'{"login":5,"remote":"203.0.113.7"}', "wrong_type"),
        ("allow", b'{"login":"a","remote":["203.0.113.7"]}', "wrong_type"),
        ("allow", b'{"login":"a","remote":"203.0.113.7","tls":"maybe"}', "wrong_type"),
        ("allow", b'{"login":"a","remote":"not-an-ip"}', "invalid_remote"),
        ("allow", b'{"login":"a","remote":""}', "invalid_remote"),
        ("report", b'{"login":"a","remote":"203.0.113.7"}', "missing_success"),
        ("report", b'{"login":"a","remote":"203.0.113.7","success":1}', "wrong_type"),
        ("bogus", b'{"login":"a","remote":"203.0.113.7"}', "unknown_command"),
        (None, b'{"login":"a","remote":"203.0.113.7"}', "missing_command"),
        ("allow", b"[" * 5000 + b"]" * 5000, "not_an_object"),
    ],
)
def test_refused_input(command: str | None, body: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_request(command, body)
    assert err.value.code in (code, "invalid_json")
    if code != "not_an_object" or len(body) < 100:
        assert err.value.code == code


def test_error_text_never_repeats_values() -> None:
    body = b'{"login":"alice","remote":"secret-pwhash-0f3b","pwhash":"0f3b"}'
    with pytest.raises(ProtocolError) as err:
        parse_request("report", body)
    assert "0f3b" not in err.value.detail


def test_ipv4_mapped_remote_is_accepted() -> None:
    event = parse_request("report", b'{"login":"a","remote":"::ffff:203.0.113.7","success":true}')
    assert event.remote == "::ffff:203.0.113.7"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_request("report", body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(["login", "remote", "protocol", "success", "tls", "x", "session_id"]),
        json_values,
    )
)
def test_arbitrary_objects_parse_or_are_refused(data: dict[str, object]) -> None:
    try:
        event = parse_request("report", json.dumps(data).encode())
    except ProtocolError as exc:
        assert exc.status == 400
    else:
        assert isinstance(event.login, str) and event.login.strip()
        assert isinstance(event.success, bool)
