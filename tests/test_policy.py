"""The decision: reason codes from history and origin, and its properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policy_server.config import PolicyConfig
from policy_server.model import AddressClass, History, KnownOrigin, Origin, Reason
from policy_server.policy import decide

POLICY = PolicyConfig()


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
    )


def history(*origins: Origin) -> History:
    return History("alice", tuple(known(o) for o in origins))


def test_first_use() -> None:
    d = decide(History("alice"), origin(), POLICY)
    assert d.reasons == (Reason.FIRST_USE,)
    assert d.notify == (Reason.FIRST_USE,)


def test_first_use_even_when_origin_is_unknown() -> None:
    d = decide(History("alice"), origin(country=None, asn=None), POLICY)
    assert d.reasons == (Reason.FIRST_USE,)


def test_known_origin() -> None:
    assert decide(history(origin()), origin(), POLICY).reasons == ()


def test_new_prefix_same_country_and_provider_is_not_unusual() -> None:
    assert decide(history(origin()), origin(prefix="203.0.112.0/24"), POLICY).reasons == ()


def test_new_country() -> None:
    d = decide(history(origin()), origin(prefix="198.51.100.0/24", country="US"), POLICY)
    assert d.reasons == (Reason.NEW_COUNTRY,)


def test_new_provider() -> None:
    d = decide(history(origin()), origin(prefix="203.0.113.128/25", asn=64501), POLICY)
    assert d.reasons == (Reason.NEW_PROVIDER,)


def test_new_country_and_provider() -> None:
    d = decide(history(origin()), origin(prefix="192.0.2.0/24", country="DE", asn=64520), POLICY)
    assert d.reasons == (Reason.NEW_COUNTRY, Reason.NEW_PROVIDER)


def test_unknown_is_never_a_reason_by_itself() -> None:
    h = history(origin())
    assert decide(h, origin(prefix="198.18.0.0/24", country=None, asn=None), POLICY).reasons == ()
    assert decide(h, origin(prefix="198.18.0.0/24", country=None, asn=64500), POLICY).reasons == ()
    assert decide(h, origin(prefix="198.18.0.0/24", country="JP", asn=None), POLICY).reasons == ()


def test_provider_by_organisation_when_no_asn() -> None:
    a = Origin("1.1.1.1", AddressClass.GLOBAL, "1.1.1.0/24", "JP", None, "Carrier A")
    b = Origin("2.2.2.2", AddressClass.GLOBAL, "2.2.2.0/24", "JP", None, "Carrier B")
    assert decide(History("x", (known(a),)), b, POLICY).reasons == (Reason.NEW_PROVIDER,)


def test_notify_switches() -> None:
    only_country = PolicyConfig(notify=(Reason.NEW_COUNTRY,))
    d = decide(History("alice"), origin(), only_country)
    assert d.reasons == (Reason.FIRST_USE,)
    assert d.notify == ()
    d = decide(
        history(origin()), origin(prefix="192.0.2.0/24", country="DE", asn=64520), only_country
    )
    assert d.notify == (Reason.NEW_COUNTRY,)


countries = st.sampled_from(["JP", "US", "DE", "FR", None])
asns = st.sampled_from([64500, 64501, 64510, None])
prefixes = st.sampled_from(["203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24", "2001:db8::/48"])
origins = st.builds(origin, prefix=prefixes, country=countries, asn=asns)


@given(st.lists(origins, max_size=6), origins)
def test_a_known_origin_never_notifies(past: list[Origin], now: Origin) -> None:
    h = history(*past, now)
    assert decide(h, now, POLICY).notify == ()


@given(st.lists(origins, min_size=1, max_size=6), origins)
def test_reasons_only_name_things_never_seen(past: list[Origin], now: Origin) -> None:
    d = decide(history(*past), now, POLICY)
    if Reason.NEW_COUNTRY in d.reasons:
        assert now.country is not None
        assert all(p.country != now.country for p in past)
    if Reason.NEW_PROVIDER in d.reasons:
        assert now.provider is not None
        assert all(p.provider != now.provider for p in past)
    assert Reason.FIRST_USE not in d.reasons


@given(st.lists(origins, max_size=6), origins)
def test_decision_is_deterministic(past: list[Origin], now: Origin) -> None:
    assert decide(history(*past), now, POLICY) == decide(history(*past), now, POLICY)
