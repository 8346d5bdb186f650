"""The sharper signals: the mail program, impossible travel, the owner's choices and a hijacked
account, decided by the policy and carried through the service to the notice and the admin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from geodata import CITY_LOCATIONS
from pages_support import ABROAD, HOME, Running, running
from pydantic import ValidationError
from test_client import REAL_IDS

from policy_server.client import Client, parse_client_id
from policy_server.config import CompromiseConfig, PolicyConfig
from policy_server.model import (
    AccountSettings,
    AddressClass,
    History,
    KnownOrigin,
    Location,
    Origin,
    Reason,
)
from policy_server.policy import decide, distance_km, repeat_writes
from policy_server.service import keys

__all__ = ["running"]  # fixture

POLICY = PolicyConfig()
COMPROMISE = CompromiseConfig()
HOUR = 3600.0
NOW = 100 * 86400.0

TOKYO = Location(*CITY_LOCATIONS["Tokyo"])
OSAKA = Location(*CITY_LOCATIONS["Osaka"])
PARIS = Location(*CITY_LOCATIONS["Paris"])
ASHBURN = Location(*CITY_LOCATIONS["Ashburn"])

THUNDERBIRD = parse_client_id('"name" "Thunderbird" "version" "128.3.1"')
OUTLOOK = parse_client_id('"name" "Microsoft Outlook" "version" "16.0.17928.20114"')
K9 = parse_client_id('"name" "com.fsck.k9" "version" "6.804"')


def origin(
    prefix: str = "203.0.113.0/24",
    country: str | None = "JP",
    asn: int | None = 64500,
    location: Location | None = None,
    network: str | None = None,
) -> Origin:
    return Origin(
        address=prefix.split("/")[0],
        address_class=AddressClass.GLOBAL,
        prefix=prefix,
        country=country,
        asn=asn,
        as_org=None,
        network=network,
        location=location,
    )


def known(
    o: Origin,
    last_seen: float = NOW - 2 * HOUR,
    clients: tuple[str, ...] = (),
    confirmed: float | None = None,
) -> KnownOrigin:
    return KnownOrigin(
        prefix=o.prefix,
        country=o.country,
        provider=o.provider,
        as_org=o.as_org,
        first_seen=0.0,
        last_seen=last_seen,
        count=10,
        network=o.network,
        clients=clients,
        location=o.location,
        confirmed=confirmed,
    )


HOME_JP = origin(location=TOKYO)


# -- the mail program ------------------------------------------------------------------------


def test_a_new_program_from_a_new_origin_makes_the_notice_more_pressing() -> None:
    assert THUNDERBIRD is not None and OUTLOOK is not None
    h = History("alice", (known(HOME_JP, clients=("Thunderbird",)),))
    abroad = origin("198.51.100.0/24", "US", 64510)
    d = decide(h, abroad, NOW, POLICY, OUTLOOK)
    assert d.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER, Reason.NEW_CLIENT)
    assert d.notify == d.reasons
    # the program the account uses: the same notice as without a program
    d = decide(h, abroad, NOW, POLICY, THUNDERBIRD)
    assert d.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)


def test_a_new_program_alone_is_recorded_without_a_notice_unless_configured() -> None:
    assert OUTLOOK is not None and THUNDERBIRD is not None
    h = History("alice", (known(HOME_JP, clients=("Thunderbird",)),))
    # a new network of the known provider, in the known country
    nearby = origin("203.0.113.128/25")
    d = decide(h, nearby, NOW, POLICY, OUTLOOK)
    assert (d.reasons, d.notify, d.note) == ((Reason.NEW_CLIENT,), (), "new_client alone")
    loud = PolicyConfig(new_client_alone=True)
    assert decide(h, nearby, NOW, loud, OUTLOOK).notify == (Reason.NEW_CLIENT,)
    # a known program from a new network of a known provider stays quiet as ever
    assert decide(h, nearby, NOW, POLICY, THUNDERBIRD).reasons == ()
    # and a new program on an exactly known origin is no reason, but it is written
    assert decide(h, HOME_JP, NOW, POLICY, OUTLOOK).reasons == ()
    stored = h.origins[0]
    assert repeat_writes(stored, stored.last_seen + 1, HOUR, 600.0, OUTLOOK) == (False, True)
    assert repeat_writes(stored, stored.last_seen + 1, HOUR, 600.0, THUNDERBIRD) == (
        False,
        False,
    )


def test_no_program_is_new_while_the_account_has_never_named_one() -> None:
    # origins learned before programs were kept, or programs that send no ID
    h = History("alice", (known(HOME_JP),))
    d = decide(h, origin("198.51.100.0/24", "US", 64510), NOW, POLICY, K9)
    assert Reason.NEW_CLIENT not in d.reasons
    # nor is a login without an ID ever new_client
    h = History("alice", (known(HOME_JP, clients=("Thunderbird",)),))
    assert (
        Reason.NEW_CLIENT
        not in decide(h, origin("198.51.100.0/24", "US", 64510), NOW, POLICY).reasons
    )


# -- impossible travel -----------------------------------------------------------------------


def test_the_distances_of_the_fixture_cities() -> None:
    assert distance_km(TOKYO, PARIS) == pytest.approx(9712, rel=0.01)
    assert distance_km(TOKYO, OSAKA) == pytest.approx(397, rel=0.02)
    assert distance_km(TOKYO, TOKYO) == 0


def test_tokyo_then_paris_an_hour_later_is_impossible_travel_and_urgent() -> None:
    h = History("alice", (known(HOME_JP, last_seen=NOW - HOUR),))
    paris = origin("2001:db8:2::/48", "FR", 64530, PARIS)
    d = decide(h, paris, NOW, POLICY)
    assert d.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER, Reason.IMPOSSIBLE_TRAVEL)
    assert d.travel is not None and d.travel.from_country == "JP"
    # the distance less both accuracy radii, over the hour since
    assert d.travel.km == pytest.approx(distance_km(TOKYO, PARIS) - 40)
    assert d.travel.hours == pytest.approx(1.0)
    assert d.urgent
    # the learning period holds the other reasons back, not this one
    learning = PolicyConfig(learning_days=365)
    held = decide(h, paris, NOW, learning)
    assert (held.notify, held.note) == ((Reason.IMPOSSIBLE_TRAVEL,), "learning")
    # a day later the journey was possible
    d = decide(h, paris, NOW + 23 * HOUR, POLICY)
    assert Reason.IMPOSSIBLE_TRAVEL not in d.reasons and d.travel is None
    # the speed is the admin's
    assert decide(h, paris, NOW, PolicyConfig(max_speed_kmh=20_000)).travel is None
    assert decide(h, paris, NOW + 23 * HOUR, PolicyConfig(max_speed_kmh=300)).travel is not None
    assert decide(h, paris, NOW, PolicyConfig(max_speed_kmh=0)).travel is None


def test_the_accuracy_radii_are_given_the_benefit_of_the_doubt() -> None:
    h = History("alice", (known(origin(location=Location(35.0, 139.0, 500)), last_seen=NOW - 60),))
    # 600 km away a minute later, but each place is only known within 500 km
    near = origin("198.51.100.0/24", "KR", 64510, Location(35.0, 132.4, 200))
    assert distance_km(h.origins[0].location, near.location) > 590  # type: ignore[arg-type]
    assert decide(h, near, NOW, POLICY).travel is None


def test_travel_is_never_judged_from_or_to_what_does_not_place_the_owner() -> None:
    paris = origin("2001:db8:2::/48", "FR", 64530, PARIS)
    recent = NOW - HOUR
    # no location on either side
    assert decide(History("a", (known(origin(), recent),)), paris, NOW, POLICY).travel is None
    unplaced = replace(paris, location=None)
    h = History("a", (known(HOME_JP, recent),))
    assert decide(h, unplaced, NOW, POLICY).travel is None
    # a known network on either side (a VPN's exit, a mail app's servers)
    assert decide(h, replace(paris, network="vpn"), NOW, POLICY).travel is None
    vpn_home = origin(location=TOKYO, network="vpn")
    assert decide(History("a", (known(vpn_home, recent),)), paris, NOW, POLICY).travel is None
    # the owner confirmed the last place: the login from there was theirs
    confirmed = History("a", (known(HOME_JP, recent, confirmed=recent),))
    assert decide(confirmed, paris, NOW, POLICY).travel is None
    # a new network of the known provider in the known country is not a journey
    osaka = origin("203.0.113.128/25", "JP", 64500, OSAKA)
    assert decide(History("a", (known(HOME_JP, NOW - 60),)), osaka, NOW, POLICY).reasons == ()
    # nor another provider in the same country: places within a country are too loose
    other = origin("203.0.113.128/25", "JP", 64501, OSAKA)
    d = decide(History("a", (known(HOME_JP, NOW - 60),)), other, NOW, POLICY)
    assert d.reasons == (Reason.NEW_PROVIDER,)


def test_the_latest_placed_origin_is_where_the_journey_starts() -> None:
    # at home in Paris an hour ago, in Tokyo a week ago: Ashburn now is impossible from Paris
    paris = origin("2001:db8:2::/48", "FR", 64530, PARIS)
    h = History("a", (known(HOME_JP, NOW - 7 * 86400), known(paris, NOW - HOUR)))
    d = decide(h, origin("198.51.100.0/24", "US", 64510, ASHBURN), NOW, POLICY)
    assert d.travel is not None and d.travel.from_country == "FR"


# -- a hijacked account ----------------------------------------------------------------------


def five_places() -> list[Origin]:
    return [
        origin("203.0.113.0/25", "JP", 64500),
        origin("203.0.113.128/25", "JP", 64501),
        origin("198.51.100.0/24", "US", 64510),
        origin("192.0.2.0/24", "DE", 64520),
        origin("2001:db8:2::/48", "FR", 64530),
    ]


def test_five_providers_within_the_hour_are_many_origins_once_a_day() -> None:
    *before, fifth = five_places()
    h = History("a", tuple(known(o, NOW - 600 * i) for i, o in enumerate(before)))
    d = decide(h, fifth, NOW, POLICY, compromise=COMPROMISE)
    assert Reason.MANY_ORIGINS in d.reasons and Reason.MANY_ORIGINS in d.notify
    assert d.spread == ("DE AS64520", "FR AS64530", "JP AS64500", "JP AS64501", "US AS64510")
    assert d.urgent
    # four are not
    assert (
        Reason.MANY_ORIGINS
        not in decide(
            History("a", h.origins[:3]), fifth, NOW, POLICY, compromise=COMPROMISE
        ).reasons
    )
    # nor five spread over more than the window
    spread_out = History("a", tuple(known(o, NOW - 1000 * (i + 1)) for i, o in enumerate(before)))
    assert (
        Reason.MANY_ORIGINS
        not in decide(spread_out, fifth, NOW, POLICY, compromise=COMPROMISE).reasons
    )
    # alerted an hour ago: not again within the day; the next day again
    alerted = replace(h, settings=AccountSettings(alerted_at=NOW - HOUR))
    assert (
        Reason.MANY_ORIGINS
        not in decide(alerted, fifth, NOW, POLICY, compromise=COMPROMISE).reasons
    )
    later = replace(h, settings=AccountSettings(alerted_at=NOW - 86400))
    assert Reason.MANY_ORIGINS in decide(later, fifth, NOW, POLICY, compromise=COMPROMISE).reasons
    # the admin's threshold, and off
    three = CompromiseConfig(providers=3)
    assert (
        Reason.MANY_ORIGINS
        in decide(History("a", h.origins[:2]), fifth, NOW, POLICY, compromise=three).reasons
    )
    # the admin's own networks and mail apps' fetchers are not a botnet
    fetcher = replace(before[0], network="mail-app")
    benign = History("a", (known(fetcher, NOW - 60), *h.origins[1:]))
    assert (
        Reason.MANY_ORIGINS not in decide(benign, fifth, NOW, POLICY, compromise=COMPROMISE).reasons
    )
    off = CompromiseConfig(providers=0)
    assert Reason.MANY_ORIGINS not in decide(h, fifth, NOW, POLICY, compromise=off).reasons
    with pytest.raises(ValidationError, match="use 0 to turn the check off"):
        CompromiseConfig(providers=1)


# -- the owner's choices ---------------------------------------------------------------------


def test_notices_off_learns_without_a_notice() -> None:
    h = History("a", (known(HOME_JP),), AccountSettings(notices=False))
    d = decide(h, origin("198.51.100.0/24", "US", 64510), NOW, POLICY)
    assert (d.reasons, d.notify, d.note) == (
        (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER),
        (),
        "notices off",
    )


def test_a_declared_trip_learns_the_country_without_a_notice_until_it_ends() -> None:
    trip = AccountSettings(trip_country="FR", trip_until=NOW + 86400)
    h = History("a", (known(HOME_JP, NOW - 30 * HOUR),), trip)
    paris = origin("2001:db8:2::/48", "FR", 64530, PARIS)
    d = decide(h, paris, NOW, POLICY)
    assert (d.notify, d.note) == ((), "on a declared trip")
    # another country than the trip's is notified as ever
    assert decide(h, origin("198.51.100.0/24", "US", 64510), NOW, POLICY).notify
    # after the trip, France is new again
    assert decide(h, paris, NOW + 2 * 86400, POLICY).notify == (
        Reason.NEW_COUNTRY,
        Reason.NEW_PROVIDER,
    )
    # a trip does not explain an impossible journey
    soon = History("a", (known(HOME_JP, NOW - HOUR),), trip)
    assert decide(soon, paris, NOW, POLICY).notify == (Reason.IMPOSSIBLE_TRAVEL,)


# -- through the service ---------------------------------------------------------------------


async def test_impossible_travel_reaches_the_payload_with_both_places(
    running: Callable[..., Awaitable[Running]], geo_files: dict[str, Path]
) -> None:
    svc = await running(
        geoip={"country_db": str(geo_files["city_mmdb"]), "asn_db": str(geo_files["asn_mmdb"])}
    )
    first = await svc.notice("alice@example.jp", HOME)
    assert first["reasons"] == ["first_use"] and first["travel"] is None
    notice = await svc.notice("alice@example.jp", "2001:db8:2::7")
    assert notice["reasons"] == ["new_country", "new_provider", "impossible_travel"]
    travel = notice["travel"]
    assert travel["from_country"] == "JP" and notice["country"] == "FR"
    assert travel["km"] == round(distance_km(TOKYO, PARIS) - 40)
    assert 0 <= travel["hours"] < 0.1
    record = await svc.client.app[keys.STORE].account_record("alice@example.jp")
    assert record is not None
    (paris,) = [row for row in record["origins"] if row["country"] == "FR"]
    assert (paris["latitude"], paris["longitude"]) == (PARIS.latitude, PARIS.longitude)


async def test_a_hijacked_account_alerts_the_admin_once_and_the_owner_once(
    running: Callable[..., Awaitable[Running]],
) -> None:
    svc = await running()
    account = "alice@example.jp"
    await svc.notice(account, HOME)
    for remote in ("203.0.113.200", "198.51.100.7", "192.0.2.7"):
        # each a notice of its own, none yet the pattern
        assert "many_origins" not in (await svc.notice(account, remote))["reasons"]
    before = len(svc.hook.received)
    await svc.report(account, "2001:db8:2::7")
    received = await svc.hook.wait_for(before + 1)
    hijack = received[before]
    assert "many_origins" in hijack["reasons"]
    assert hijack["origins"] == [
        "DE AS64520",
        "FR AS64530",
        "JP AS64500",
        "JP AS64501",
        "US AS64510",
    ]
    (alert,) = await svc.admin.wait_for(1)
    assert account in alert["message"] and "US AS64510" in alert["message"]
    assert svc.metric("policy_server_many_origins_alerts_total") == 1
    # the pattern going on makes no second alert today
    await svc.report(account, "203.0.113.201")
    await svc.report(account, "2001:db8:1::9")
    settings = await svc.client.app[keys.STORE].settings(account)
    assert settings.alerted_at is not None
    assert [n for n in svc.hook.received if "many_origins" in n["reasons"]] == [hijack]
    assert svc.metric("policy_server_many_origins_alerts_total") == 1
    assert len(svc.admin.received) == 1


async def test_the_programs_an_origin_saw_are_kept_and_a_new_one_is_written(
    running: Callable[..., Awaitable[Running]],
) -> None:
    svc = await running()
    store = svc.client.app[keys.STORE]
    account = "alice@example.jp"
    thunderbird = '"name" "Thunderbird" "version" "128.3"'
    await svc.notice(account, HOME, thunderbird)
    # the same origin a minute later from the phone: a fresh repeat would write nothing, but
    # the program is new for it
    await svc.report(account, HOME, '"name" "iPhone Mail" "version" "21A329"')
    history = await store.history(account)
    assert [o.clients for o in history.origins] == [("Thunderbird", "iPhone Mail")]
    # a new program from another country: the notice says so
    notice = await svc.notice(account, ABROAD, '"name" "Microsoft Outlook" "version" "16.0"')
    assert notice["reasons"] == ["new_country", "new_provider", "new_client"]
    assert notice["client"] == {"name": "Microsoft Outlook", "version": "16.0"}


def test_the_client_label_types() -> None:
    assert isinstance(THUNDERBIRD, Client) and THUNDERBIRD.name == "Thunderbird"


@pytest.mark.parametrize("text", [text for text, _, _ in REAL_IDS])
def test_every_real_program_is_new_to_an_account_that_used_another(text: str) -> None:
    program = parse_client_id(text)
    assert program is not None
    other = "Thunderbird" if program.name != "Thunderbird" else "K-9 Mail"
    h = History("alice", (known(HOME_JP, clients=(other,)),))
    abroad = origin("198.51.100.0/24", "US", 64510)
    assert decide(h, abroad, NOW, POLICY, program).reasons[-1] is Reason.NEW_CLIENT
    # once the account used it, from anywhere, it is no longer new
    used = History("alice", (known(HOME_JP, clients=(other, program.name)),))
    assert Reason.NEW_CLIENT not in decide(used, abroad, NOW, POLICY, program).reasons
