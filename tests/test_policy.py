"""The decision: reason codes from history and origin, and its properties."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from policy_server.config import PolicyConfig
from policy_server.model import AddressClass, History, KnownOrigin, Origin, Reason
from policy_server.policy import KNOWN, decide, live_origins, placeable

POLICY = PolicyConfig()
NOW = 10_000.0
DAY = 86400.0


def origin(
    prefix: str = "203.0.113.0/24", country: str | None = "JP", asn: int | None = 64500
) -> Origin:
    return Origin(
        address=prefix.split("/")[0],
        address_class=AddressClass.GLOBAL,
        prefix=prefix,
        country=country,
        asn=asn,
        as_org=None,
    )


def known(o: Origin, last_seen: float = 1000.0) -> KnownOrigin:
    return KnownOrigin(
        prefix=o.prefix,
        country=o.country,
        provider=o.provider,
        as_org=o.as_org,
        first_seen=0.0,
        last_seen=last_seen,
        count=1,
        network=o.network,
    )


def history(*origins: Origin) -> History:
    return History("alice", tuple(known(o) for o in origins))


def test_first_use() -> None:
    d = decide(History("alice"), origin(), NOW, POLICY)
    assert d.reasons == (Reason.FIRST_USE,)
    assert d.notify == (Reason.FIRST_USE,)


def test_the_first_placeable_origin_after_fetchers_and_unknowns_is_first_use() -> None:
    unknown = origin("198.18.0.0/24", country=None, asn=None)
    fetcher = replace(origin("192.0.2.0/24", "US", 64496), network="mail-app")
    cloud = replace(origin("198.51.100.0/24", "US", 64510), network="hosting")
    home = origin()
    for past in ((unknown,), (fetcher,), (unknown, fetcher, cloud)):
        d = decide(history(*past), home, NOW, POLICY)
        assert d.reasons == (Reason.FIRST_USE,), past
        assert d.notify == (Reason.FIRST_USE,)
    # once the owner is placed, the usual reasons
    d = decide(history(fetcher, home), origin("192.0.2.0/24", "DE", 64520), NOW, POLICY)
    assert set(d.reasons) == {Reason.NEW_COUNTRY, Reason.NEW_PROVIDER}
    # another unplaceable login after them stays as it was: nothing to compare
    assert decide(history(unknown), origin("198.18.1.0/24", None, None), NOW, POLICY) == KNOWN
    # a fetcher after fetchers is a new network of its kind, not a first use
    other = replace(origin("192.0.2.0/24", "US", 64497), network="mail-app")
    assert decide(history(fetcher), other, NOW, POLICY).reasons == (Reason.VIA_MAIL_APP,)


def test_first_use_even_when_origin_is_unknown() -> None:
    d = decide(History("alice"), origin(country=None, asn=None), NOW, POLICY)
    assert d.reasons == (Reason.FIRST_USE,)


def test_known_origin() -> None:
    assert decide(history(origin()), origin(), NOW, POLICY).reasons == ()


def test_new_prefix_same_country_and_provider_is_not_unusual() -> None:
    assert decide(history(origin()), origin(prefix="203.0.112.0/24"), NOW, POLICY).reasons == ()


def test_new_country() -> None:
    d = decide(history(origin()), origin(prefix="198.51.100.0/24", country="US"), NOW, POLICY)
    assert d.reasons == (Reason.NEW_COUNTRY,)


def test_new_provider() -> None:
    d = decide(history(origin()), origin(prefix="203.0.113.128/25", asn=64501), NOW, POLICY)
    assert d.reasons == (Reason.NEW_PROVIDER,)


def test_new_country_and_provider() -> None:
    d = decide(
        history(origin()), origin(prefix="192.0.2.0/24", country="DE", asn=64520), NOW, POLICY
    )
    assert d.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)


def test_unknown_is_never_a_reason_by_itself() -> None:
    h = history(origin())
    assert (
        decide(h, origin(prefix="198.18.0.0/24", country=None, asn=None), NOW, POLICY).reasons == ()
    )
    assert (
        decide(h, origin(prefix="198.18.0.0/24", country=None, asn=64500), NOW, POLICY).reasons
        == ()
    )
    assert (
        decide(h, origin(prefix="198.18.0.0/24", country="JP", asn=None), NOW, POLICY).reasons == ()
    )


def test_provider_by_organisation_when_no_asn() -> None:
    a = Origin("1.1.1.1", AddressClass.GLOBAL, "1.1.1.0/24", "JP", None, "Carrier A")
    b = Origin("2.2.2.2", AddressClass.GLOBAL, "2.2.2.0/24", "JP", None, "Carrier B")
    assert decide(History("x", (known(a),)), b, NOW, POLICY).reasons == (Reason.NEW_PROVIDER,)


def test_notify_switches() -> None:
    only_country = PolicyConfig(notify=(Reason.NEW_COUNTRY,))
    d = decide(History("alice"), origin(), NOW, only_country)
    assert d.reasons == (Reason.FIRST_USE,)
    assert d.notify == ()
    d = decide(
        history(origin()),
        origin(prefix="192.0.2.0/24", country="DE", asn=64520),
        NOW,
        only_country,
    )
    assert d.notify == (Reason.NEW_COUNTRY,)


countries = st.sampled_from(["JP", "US", "DE", "FR", None])
asns = st.sampled_from([64500, 64501, 64510, None])
prefixes = st.sampled_from(["203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24", "2001:db8::/48"])
origins = st.builds(origin, prefix=prefixes, country=countries, asn=asns)


@given(st.lists(origins, max_size=6), origins)
def test_a_known_origin_never_notifies(past: list[Origin], now: Origin) -> None:
    h = history(*past, now)
    assert decide(h, now, NOW, POLICY).notify == ()


@given(st.lists(origins, min_size=1, max_size=6), origins)
def test_reasons_only_name_things_never_seen(past: list[Origin], now: Origin) -> None:
    d = decide(history(*past), now, NOW, POLICY)
    if Reason.NEW_COUNTRY in d.reasons:
        assert now.country is not None
        assert all(p.country != now.country for p in past)
    if Reason.NEW_PROVIDER in d.reasons:
        assert now.provider is not None
        assert all(p.provider != now.provider for p in past)
    # a history that places nobody is no reference: the first placeable origin is first use
    if Reason.FIRST_USE in d.reasons:
        assert placeable(now) and not any(placeable(p) for p in past)


@given(st.lists(origins, max_size=6), origins)
def test_decision_is_deterministic(past: list[Origin], now: Origin) -> None:
    assert decide(history(*past), now, NOW, POLICY) == decide(history(*past), now, NOW, POLICY)


def with_org(o: Origin, org: str) -> Origin:
    return Origin(o.address, o.address_class, o.prefix, o.country, o.asn, org)


def test_learning_by_days_is_silent_but_first_use_is_not() -> None:
    policy = PolicyConfig(learning_days=14)
    assert decide(History("a"), origin(), NOW, policy).notify == (Reason.FIRST_USE,)
    h = History("a", (known(origin(), last_seen=NOW),))  # first seen at 0
    us = origin(prefix="198.51.100.0/24", country="US", asn=64510)
    during = decide(h, us, 13 * DAY, policy)
    assert during.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    assert (during.notify, during.note) == ((), "learning")
    after = decide(h, us, 15 * DAY, policy)
    assert after.notify == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)
    # first_use follows its own switch, learning or not
    quiet = PolicyConfig(learning_days=14, notify=(Reason.NEW_COUNTRY,))
    assert decide(History("a"), origin(), NOW, quiet).notify == ()


def test_learning_by_logins() -> None:
    policy = PolicyConfig(learning_logins=5)
    base = known(origin())
    us = origin(prefix="198.51.100.0/24", country="US", asn=64510)
    four = History("a", (KnownOrigin(base.prefix, "JP", "AS64500", None, 0.0, 1000.0, 4),))
    five = History("a", (KnownOrigin(base.prefix, "JP", "AS64500", None, 0.0, 1000.0, 5),))
    assert decide(four, us, NOW, policy).note == "learning"
    assert decide(five, us, NOW, policy).notify == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)


def test_provider_groups_and_organisations() -> None:
    home = origin(asn=64500)
    moved = origin(prefix="203.0.113.128/25", asn=64501)
    assert decide(history(home), moved, NOW, POLICY).reasons == (Reason.NEW_PROVIDER,)
    grouped = PolicyConfig(provider_groups=((64500, 64501),))
    assert decide(history(home), moved, NOW, grouped).reasons == ()
    # the same organisation name in the data, spelt a little differently
    a = with_org(home, "NTT DOCOMO, INC.")
    b = with_org(moved, "NTT Docomo Inc")
    assert decide(history(a), b, NOW, POLICY).reasons == ()
    assert decide(history(a), b, NOW, PolicyConfig(same_org_same_provider=False)).reasons == (
        Reason.NEW_PROVIDER,
    )


def test_an_origin_ages_by_use_of_others_not_by_the_clock() -> None:
    usual = origin()
    # back after 400 days of silence, from the usual place: known
    h = History("a", (known(usual, last_seen=0.0),))
    assert decide(h, usual, 400 * DAY, POLICY) == decide(h, usual, 0.0, POLICY)
    assert decide(h, usual, 400 * DAY, POLICY).reasons == ()
    # moved on: another provider used for 200 days since; the old one is forgotten
    other = origin(prefix="198.51.100.0/24", country="JP", asn=64510)
    h = History("a", (known(usual, last_seen=0.0), known(other, last_seen=200 * DAY)))
    assert decide(h, usual, 201 * DAY, POLICY).reasons == (Reason.NEW_PROVIDER,)
    h = History("a", (known(usual, last_seen=100 * DAY), known(other, last_seen=200 * DAY)))
    assert decide(h, usual, 201 * DAY, POLICY).reasons == ()


def test_known_networks() -> None:
    h = history(origin())
    office = Origin(
        "192.0.2.9", AddressClass.GLOBAL, "192.0.2.0/24", "DE", 64520, None, "trusted", "HQ"
    )
    assert decide(h, office, NOW, POLICY).notify == ()
    assert decide(History("new"), office, NOW, POLICY).reasons == ()
    vpn = Origin("192.0.2.9", AddressClass.GLOBAL, "192.0.2.0/24", "DE", 64520, None, "vpn", "VPN")
    d = decide(h, vpn, NOW, POLICY)
    assert (d.reasons, d.notify) == ((Reason.VIA_VPN,), (Reason.VIA_VPN,))
    app = Origin("192.0.2.9", AddressClass.GLOBAL, "192.0.2.0/24", "DE", 64520, None, "mail-app")
    d = decide(h, app, NOW, POLICY)
    assert (d.reasons, d.notify, d.note) == ((Reason.VIA_MAIL_APP,), (), "not in policy.notify")
    # a known origin inside a network stays quiet
    assert decide(history(vpn), vpn, NOW, POLICY).reasons == ()


networks = st.sampled_from([None, "trusted", "vpn", "hosting", "mail-app", "corporate"])
placed = st.builds(
    lambda o, n: Origin(o.address, o.address_class, o.prefix, o.country, o.asn, None, n),
    origins,
    networks,
)
ages = st.floats(min_value=0, max_value=1000 * DAY)


@given(st.lists(origins, max_size=6), placed)
def test_trusted_never_notifies(past: list[Origin], now: Origin) -> None:
    trusted = Origin(
        now.address, now.address_class, now.prefix, now.country, now.asn, None, "trusted"
    )
    assert decide(history(*past), trusted, NOW, POLICY).notify == ()


@given(st.lists(st.tuples(origins, ages), min_size=1, max_size=6), st.tuples(origins, ages))
def test_aging_is_monotonic(past: list[tuple[Origin, float]], later: tuple[Origin, float]) -> None:
    before = History("a", tuple(known(o, t) for o, t in past))
    newest = max(t for _, t in past)
    o, extra = later
    after = History("a", (*before.origins, known(o, newest + extra)))
    still = set(live_origins(after, POLICY))
    # more use elsewhere can only make old origins stale, never known again
    assert {k for k in before.origins if k in still} <= set(live_origins(before, POLICY))


@given(st.lists(st.tuples(origins, ages), max_size=6), placed, ages)
def test_a_live_known_origin_never_notifies(
    past: list[tuple[Origin, float]], now: Origin, at: float
) -> None:
    h = History("a", (*(known(o, t) for o, t in past), known(now, 1000 * DAY + 1)))
    assert decide(h, now, at, POLICY).notify == ()
