"""Dovecot keeps logging users in whatever happens to the service, and the service copes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import imap_login
from harness import wait_until
from world import World, start_world, stop_world

# Dovecot sends allow before and after the password check only when asked; turn both on here so
# that logins really wait on the service.
CHECKS = {"auth_policy_check_before_auth": "yes", "auth_policy_check_after_auth": "yes"}


_counter = itertools.count(1)


@pytest.fixture
def fresh(e2e_dir: Path, geo: dict[str, Path]) -> Iterator[object]:
    worlds: list[World] = []

    def make(**kwargs: str) -> World:
        # short names: Dovecot's unix sockets live below this directory (108-byte limit)
        world = start_world(e2e_dir / f"w{next(_counter)}", geo, **kwargs)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        stop_world(world)


def test_api_header_on_both_sides(fresh: object) -> None:
    world = fresh(api_header="X-API-Key: s3cret", dovecot_header="X-API-Key: s3cret", **CHECKS)  # type: ignore[operator]
    d = world.dovecot
    refused_before = world.service.log().count("refused request")  # the harness's own probe
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    (notice,) = world.sink.wait_for("bob")
    assert notice["reasons"] == ["first_use"]
    assert world.service.log().count("refused request") == refused_before


def test_bare_api_header_value_is_sent_as_x_api_key(fresh: object) -> None:
    world = fresh(api_header="s3cret", dovecot_header="s3cret")  # type: ignore[operator]
    d = world.dovecot
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    world.sink.wait_for("bob")


def test_wrong_api_header_is_refused_and_logins_still_succeed(fresh: object) -> None:
    world = fresh(api_header="X-API-Key: s3cret", dovecot_header="X-API-Key: wrong", **CHECKS)  # type: ignore[operator]
    d, s = world.dovecot, world.service
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    wait_until(lambda: "401" in d.log(), 10, "Dovecot to log the 401 it got")
    assert "unauthorized" in s.log()
    assert s.query("SELECT count(*) FROM accounts") == [(0,)]
    assert world.sink.received() == []


def test_frozen_or_stopped_service_never_blocks_logins(fresh: object) -> None:
    world = fresh(auth_policy_server_timeout_msecs="500", **CHECKS)  # type: ignore[operator]
    d, s = world.dovecot, world.service

    s.freeze()
    try:
        started = time.monotonic()
        assert imap_login(d.imap_port, "carol", d.password("carol"), "203.0.113.9")
        assert time.monotonic() - started >= 0.5  # Dovecot did wait for its timeout...
        wait_until(lambda: "timeout" in d.log().lower(), 10, "Dovecot to give up on the policy")
    finally:
        s.thaw()  # ...and carried on; now the service catches up

    assert imap_login(d.imap_port, "user10", d.password("user10"), "192.0.2.10")
    world.sink.wait_for("user10")

    s.stop()
    assert imap_login(d.imap_port, "user11", d.password("user11"), "192.0.2.11")
    s.start()
    assert imap_login(d.imap_port, "user12", d.password("user12"), "192.0.2.12")
    (notice,) = world.sink.wait_for("user12")
    assert notice["country"] == "DE"


def test_multi_level_attributes_invalid_json(fresh: object) -> None:
    attributes = (
        "login=%{requested_username} remote=%{rip} protocol=%s session_id=%{session} "
        "a/b/c=1 a/b/d=2 a/e=3"
    )
    world = fresh(auth_policy_request_attributes=attributes)  # type: ignore[operator]
    d, s = world.dovecot, world.service
    assert imap_login(d.imap_port, "bob", d.password("bob"), "203.0.113.8")
    wait_until(lambda: "invalid JSON" in s.log(), 10, "the service to log the bad body")
    assert "more than one '/'" in s.log()
    assert s.ready()  # still up and answering
    assert s.query("SELECT count(*) FROM accounts") == [(0,)]
