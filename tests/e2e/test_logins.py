"""Logins through a real Dovecot reach the service and produce the right notices."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from clients import (
    doveadm_auth_test,
    imap_login,
    pop3_login,
    postfix_sasl_auth,
    submission_login,
)
from harness import wait_until
from world import World

from policy_server.events import parse_dovecot_line

pytestmark = pytest.mark.e2e


def login_recorded(world: World, user: str, before: int) -> None:
    wait_until(lambda: world.service.origins(user) > before, 10, f"history of {user}")


def test_imap_first_repeat_country_provider_ipv6_unknown(world: World) -> None:
    d, s, sink = world.dovecot, world.service, world.sink
    user = "alice"
    pw = d.password(user)

    assert imap_login(d.imap_port, user, pw, "203.0.113.7")
    (first,) = sink.wait_for(user, 1)
    assert first["login"] == user
    assert first["reasons"] == ["first_use"]
    assert (first["protocol"], first["remote"], first["country"], first["asn"]) == (
        "imap",
        "203.0.113.7",
        "JP",
        64500,
    )
    assert "IMAP" in first["message"]

    count = s.origins(user)
    assert imap_login(d.imap_port, user, pw, "203.0.113.7")
    login_recorded(world, user, count)
    assert s.notices(user) == 1  # the same address again: nothing new

    assert imap_login(d.imap_port, user, pw, "198.51.100.9")
    second = sink.wait_for(user, 2)[1]
    assert "new_country" in second["reasons"]
    assert (second["protocol"], second["country"], second["asn"]) == ("imap", "US", 64510)

    assert imap_login(d.imap_port, user, pw, "203.0.113.200")
    third = sink.wait_for(user, 3)[2]
    assert third["reasons"] == ["new_provider"]
    assert (third["country"], third["asn"]) == ("JP", 64501)

    assert imap_login(d.imap_port, user, pw, "2001:db8:2::5")
    fourth = sink.wait_for(user, 4)[3]
    assert "new_country" in fourth["reasons"]
    assert fourth["remote"] == "2001:db8:2::5"
    assert (fourth["country"], fourth["asn"]) == ("FR", 64530)

    count = s.origins(user)
    assert imap_login(d.imap_port, user, pw, "198.18.0.9")
    login_recorded(world, user, count)
    assert s.notices(user) == 4  # geo data does not know it: no notice


def test_pop3_with_xclient(world: World) -> None:
    d = world.dovecot
    assert pop3_login(d.pop3_port, "user1", d.password("user1"), "192.0.2.44")
    (notice,) = world.sink.wait_for("user1")
    assert (notice["login"], notice["reasons"]) == ("user1", ["first_use"])
    assert (notice["protocol"], notice["remote"], notice["country"], notice["asn"]) == (
        "pop3",
        "192.0.2.44",
        "DE",
        64520,
    )
    assert "POP3" in notice["message"]


def test_submission_with_xclient(world: World) -> None:
    d = world.dovecot
    assert submission_login(d.submission_port, "user2", d.password("user2"), "198.51.100.23")
    (notice,) = world.sink.wait_for("user2")
    assert (notice["login"], notice["reasons"]) == ("user2", ["first_use"])
    assert (notice["protocol"], notice["remote"], notice["country"], notice["asn"]) == (
        "submission",
        "198.51.100.23",
        "US",
        64510,
    )
    assert "SMTP" in notice["message"]


def test_smtp_auth_as_postfix_does_it(world: World) -> None:
    d = world.dovecot
    assert postfix_sasl_auth(d.base_dir, "user3", d.password("user3"), "203.0.113.99")
    (notice,) = world.sink.wait_for("user3")
    assert (notice["login"], notice["reasons"]) == ("user3", ["first_use"])
    assert (notice["protocol"], notice["remote"], notice["country"], notice["asn"]) == (
        "smtp",
        "203.0.113.99",
        "JP",
        64500,
    )
    assert "SMTP" in notice["message"]


def test_doveadm_auth_test(world: World) -> None:
    d = world.dovecot
    assert doveadm_auth_test(d, "user4", d.password("user4"), "2001:db8:1::77")
    (notice,) = world.sink.wait_for("user4")
    assert (notice["login"], notice["reasons"]) == ("user4", ["first_use"])
    assert (notice["protocol"], notice["remote"], notice["country"], notice["asn"]) == (
        "doveadm",
        "2001:db8:1::77",
        "JP",
        64500,
    )


def test_doveadm_auth_test_names_the_service_it_is_given(world: World) -> None:
    d = world.dovecot
    assert doveadm_auth_test(d, "user7", d.password("user7"), "192.0.2.77", service="imap")
    (notice,) = world.sink.wait_for("user7")
    assert (notice["protocol"], notice["remote"], notice["country"]) == ("imap", "192.0.2.77", "DE")


def test_wrong_password_and_unknown_user_change_nothing(world: World) -> None:
    d, s = world.dovecot, world.service
    assert imap_login(d.imap_port, "user5", d.password("user5"), "203.0.113.50")
    world.sink.wait_for("user5")
    before = s.origins("user5")

    assert not imap_login(d.imap_port, "user5", "wrong", "192.0.2.200")
    wait_until(lambda: s.failures("user5") == 1, 10, "the failure to be counted")
    assert s.origins("user5") == before
    assert s.notices("user5") == 1

    assert not imap_login(d.imap_port, "nosuchuser", "whatever", "192.0.2.201")
    # a later successful login is recorded; the unknown user left no trace before it
    assert imap_login(d.imap_port, "user6", d.password("user6"), "203.0.113.51")
    world.sink.wait_for("user6")
    wait_until(lambda: "report imap success=False" in s.log(), 10, "the unknown user's report")
    assert s.query("SELECT count(*) FROM accounts WHERE account = 'nosuchuser'") == [(0,)]
    assert world.sink.received("nosuchuser") == []


def test_import_log_reads_this_dovecots_login_lines(world: World) -> None:
    """``import-log`` understands the login lines this major writes to its own log file."""
    d = world.dovecot
    assert imap_login(d.imap_port, "user8", d.password("user8"), "192.0.2.88")
    assert pop3_login(d.pop3_port, "user8", d.password("user8"), "2001:db8:1::88")
    assert submission_login(d.submission_port, "user8", d.password("user8"), "198.51.100.88")
    now = datetime.now(UTC)

    def events() -> list[tuple[str, str, str]]:
        parsed = (parse_dovecot_line(line, UTC, now) for line in d.log().splitlines())
        return [(e.login, e.remote, e.protocol) for e in parsed if e and e.login == "user8"]

    found = wait_until(lambda: len(events()) == 3 and events(), 10, "three login lines")
    assert sorted(found) == [
        ("user8", "192.0.2.88", "imap"),
        ("user8", "198.51.100.88", "submission"),
        ("user8", "2001:db8:1::88", "pop3"),
    ]
