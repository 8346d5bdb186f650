"""Dovecot keeps logging users in whatever happens to the service, and the service copes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builds import DovecotBuild, Scenario
from clients import imap_login
from harness import wait_until
from world import World, start_world, stop_world

pytestmark = pytest.mark.e2e

MakeWorld = Callable[..., World]

_counter = itertools.count(1)


@pytest.fixture
def fresh(build: DovecotBuild, e2e_dir: Path, geo: dict[str, Path]) -> Iterator[MakeWorld]:
    worlds: list[World] = []

    def make(**kwargs: Any) -> World:
        # short names: Dovecot's unix sockets live below this directory (108-byte limit)
        world = start_world(build, e2e_dir / f"w{next(_counter)}", geo, **kwargs)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        stop_world(world)


def test_api_header_on_both_sides(fresh: MakeWorld) -> None:
    # auth_debug makes Dovecot log each policy request and the status it parsed from the answer;
    # Dovecot sends allow before and after the password check only when asked: both on here
    world = fresh(scenario=Scenario(checks=True, auth_debug=True))
    d = world.dovecot
    refused_before = world.service.log().count("refused request")  # the harness's own probe
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    (notice,) = world.sink.wait_for("bob")
    assert (notice["reasons"], notice["protocol"], notice["asn"]) == (["first_use"], "imap", 64500)
    assert world.service.log().count("refused request") == refused_before

    # all three request kinds went out and were answered: allow, allow, report
    lines = wait_until(
        lambda: (
            [line for line in d.policy_lines("bob") if "report action finished" in line]
            and d.policy_lines("bob")
        ),
        10,
        "Dovecot to finish the report",
    )
    assert sum("Policy request" in line and "command=allow" in line for line in lines) == 2
    assert sum("Policy request" in line and "command=report" in line for line in lines) == 1
    assert sum(line.endswith("Policy response 0") for line in lines) == 2
    assert not [line for line in lines if "HTTP error" in line]

    # what the shipped file makes Dovecot send: never pwhash; the mail program's ID
    bodies = d.request_bodies("bob")
    assert len(bodies) == 3
    expected = {"login", "remote", "protocol", "session_id", "device_id", "tls"}
    if world.major == "2.4":
        expected.add("fail_type")
    for body in bodies:
        assert "pwhash" not in body
        assert expected <= set(body) <= expected | {"success", "policy_reject"}
        assert body["device_id"] == '"name" "e2e-client"'


def test_bare_api_header_value_is_sent_as_x_api_key(fresh: MakeWorld) -> None:
    world = fresh(api_header="s3cret", scenario=Scenario(api_header="s3cret"))
    d = world.dovecot
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    (notice,) = world.sink.wait_for("bob")
    assert notice["reasons"] == ["first_use"]


def test_wrong_api_header_is_refused_and_logins_still_succeed(fresh: MakeWorld) -> None:
    world = fresh(
        api_header="X-API-Key: s3cret",
        scenario=Scenario(api_header="X-API-Key: wrong", checks=True),
    )
    d, s = world.dovecot, world.service
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    # allow, allow and report were all refused; once the report's 401 is logged nothing is pending
    wait_until(
        lambda: d.log().count("Policy server HTTP error: 401") >= 3, 10, "Dovecot to log 3 x 401"
    )
    assert "unauthorized" in s.log()
    assert s.query("SELECT count(*) FROM accounts") == [(0,)]
    assert world.sink.received() == []


def test_frozen_or_stopped_service_never_blocks_logins(fresh: MakeWorld) -> None:
    world = fresh(scenario=Scenario(timeout_ms=500, checks=True))
    d, s = world.dovecot, world.service

    s.freeze()
    try:
        started = time.monotonic()
        assert imap_login(d.imap_port, "carol", d.password("carol"), "203.0.113.9")
        took = time.monotonic() - started
        # Dovecot waited for its timeout on each allow check, then carried on
        assert 0.5 <= took < 5, took
        wait_until(lambda: "timeout" in d.log().lower(), 10, "Dovecot to give up on the policy")
    finally:
        s.thaw()

    assert imap_login(d.imap_port, "user10", d.password("user10"), "192.0.2.10")
    (notice,) = world.sink.wait_for("user10")
    assert (notice["reasons"], notice["country"]) == (["first_use"], "DE")

    s.stop()
    assert imap_login(d.imap_port, "user11", d.password("user11"), "192.0.2.11")
    s.start()
    assert imap_login(d.imap_port, "user12", d.password("user12"), "192.0.2.12")
    (notice,) = world.sink.wait_for("user12")
    assert (notice["reasons"], notice["country"]) == (["first_use"], "DE")


NESTED = (("a/b/c", "1"), ("a/b/d", "2"), ("a/e", "3"))


def test_multi_level_attribute_keys(fresh: MakeWorld) -> None:
    world = fresh(scenario=Scenario(extra_attributes=NESTED, auth_debug=True))
    d, s = world.dovecot, world.service
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    if world.major == "2.4":
        # valid JSON, every attribute after "a/b/c" inside group "a": found there, and the
        # cause logged
        (notice,) = world.sink.wait_for("bob")
        assert (notice["reasons"], notice["remote"], notice["protocol"]) == (
            ["first_use"],
            "203.0.113.8",
            "imap",
        )
        report = next(b for b in d.request_bodies("bob") if "success" in b)
        assert "login" not in report and report["a"]["login"] == "bob"
        assert "nested inside a group" in s.log()
        assert "more than one '/'" in s.log()
        return
    # Dovecot 2.3: invalid JSON, refused with a log line that names the cause
    wait_until(lambda: "invalid JSON" in s.log(), 10, "the service to log the bad body")
    assert "more than one '/'" in s.log()
    wait_until(lambda: "Policy server HTTP error: 400" in d.log(), 10, "Dovecot to see the 400")
    assert s.query("SELECT count(*) FROM accounts") == [(0,)]

    # still up, and a well-formed report is handled as usual
    report = {
        "login": "bob",
        "remote": "203.0.113.8",
        "protocol": "imap",
        "success": True,
        "policy_reject": False,
        "tls": False,
    }
    assert s.post("report", report, timeout=5) == 200
    (notice,) = world.sink.wait_for("bob")
    assert notice["reasons"] == ["first_use"]
