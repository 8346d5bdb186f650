"""The owner answers "It wasn't me" and a real Dovecot refuses that origin for the account.

With both allow checks on, Dovecot asks the service ``command=allow`` before the password is
checked; an account's blocked origin is answered status -1, and Dovecot refuses the login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from builds import DovecotBuild, Scenario
from clients import imap_login
from harness import wait_until
from owner_page import answer_link
from world import World, start_world, stop_world

pytestmark = pytest.mark.e2e

HOME = "203.0.113.7"  # JP, AS64500 "Example Carrier JP" in tests/geodata.py
ABROAD = "198.51.100.9"  # US, AS64510 "Example Hosting US"
ABROAD_TOO = "198.51.100.200"  # the same provider, another address
REFUSED = "policy_server_allow_refused_total"
ACTIVE = "policy_server_blocks_active"


@pytest.fixture
def blocking(build: DovecotBuild, e2e_dir: Path, geo: dict[str, Path]) -> Iterator[World]:
    """A Dovecot with both allow checks, and a service with its owner's pages and /metrics."""
    world = start_world(
        build, e2e_dir / "blocking", geo, scenario=Scenario(checks=True), web=True, metrics=True
    )
    yield world
    stop_world(world)


def refusals_in_log(world: World, user: str) -> int:
    """Dovecot's log lines for ``user`` saying the policy server refused the login, with the
    message of the service's status -1 answer."""
    said = "Authentication failure due to policy server refusal: login refused from this network"
    return sum(said in line for line in world.dovecot.policy_lines(user))


def test_it_wasnt_me_refuses_that_provider_until_the_block_is_cleared(blocking: World) -> None:
    d, s, sink = blocking.dovecot, blocking.service, blocking.sink
    alice, bob = "alice", "bob"

    def login(user: str, address: str) -> bool:
        return imap_login(d.imap_port, user, d.password(user), address)

    # home first, then another provider in another country: a notice with the owner's links
    assert login(alice, HOME)
    assert sink.wait_for(alice, 1)[0]["reasons"] == ["first_use"]
    assert login(alice, ABROAD)
    notice = sink.wait_for(alice, 2)[1]
    assert "new_country" in notice["reasons"]
    assert (notice["remote"], notice["country"], notice["asn"]) == (ABROAD, "US", 64510)
    links = notice["links"]
    assert links is not None, notice
    assert links["deny"].startswith(f"{s.public_url}/deny?t="), links
    assert links["confirm"].startswith(f"{s.public_url}/confirm?t="), links

    # the owner opens "It wasn't me" and presses the button
    result = asyncio.run(answer_link(links["deny"], "deny"))
    assert 'data-result="denied"' in result, result

    # Dovecot now refuses alice from that provider, before her password: allow said -1.
    # (Polling the service rather than logging in: each refused login makes Dovecot 2.3 hold
    # the next one from that address longer, its auth penalty.)
    wait_until(lambda: s.metric(ACTIVE) == 1, 10, "the block in force")
    refused_before = s.metric(REFUSED)
    assert not login(alice, ABROAD)
    assert s.metric(REFUSED) == refused_before + 1
    wait_until(lambda: refusals_in_log(blocking, alice) == 1, 10, "Dovecot's refusal line")
    # the block covers the provider in that country, not one address
    assert not login(alice, ABROAD_TOO)
    assert s.metric(REFUSED) == refused_before + 2
    wait_until(lambda: refusals_in_log(blocking, alice) == 2, 10, "Dovecot's second refusal line")

    # her home still works, and another account from the blocked address too (on 2.3 after
    # the auth penalty of that address's refused login, a few seconds)
    assert login(alice, HOME)
    assert login(bob, ABROAD)
    assert s.metric(REFUSED) == refused_before + 2
    assert refusals_in_log(blocking, bob) == 0

    listed = s.cli("blocks", "list", alice)
    assert listed.returncode == 0, listed.stderr
    assert "by owner" in listed.stdout, listed.stdout
    assert f"from notice {notice['id']}" in listed.stdout, listed.stdout

    # the operator lifts the block from the command line; the running service reads the
    # blocks again (every second) and lets alice in from that provider
    cleared = s.cli("blocks", "clear", alice)
    assert cleared.returncode == 0, cleared.stderr
    assert "cleared 1 block(s) of alice" in cleared.stdout, cleared.stdout
    wait_until(lambda: s.metric(ACTIVE) == 0, 10, "the service to read the cleared block")
    assert login(alice, ABROAD)
    assert s.metric(REFUSED) == refused_before + 2
    assert refusals_in_log(blocking, alice) == 2
