"""Origins from generated GeoIP2 / GeoLite2-ASN / pyasn files and from the bundled dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from geodata import Network, write_asn_mmdb, write_country_mmdb

from policy_server.commands.main import main
from policy_server.config import GeoipConfig
from policy_server.model import AddressClass
from policy_server.origin.address import AddressError, classify, parse_address
from policy_server.origin.backends import open_asn_file, open_country_file
from policy_server.origin.resolver import OriginResolver, Place


def resolver(
    geo: dict[str, Path], country: str = "country_mmdb", asn: str = "asn_mmdb", **kw: object
) -> OriginResolver:
    names = str(geo["asn_names"]) if kw.pop("names", False) else ""
    return OriginResolver.from_config(
        GeoipConfig(
            country_db=str(geo[country]), asn_db=str(geo[asn]), asn_names=names, bundled=False, **kw
        )  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("country", ["country_mmdb", "city_mmdb"])
@pytest.mark.parametrize("asn", ["asn_mmdb", "ipasn"])
def test_country_and_asn_from_files(geo_files: dict[str, Path], country: str, asn: str) -> None:
    r = resolver(geo_files, country, asn, names=True)
    o = r.resolve("203.0.113.7")
    assert (o.country, o.asn, o.as_org, o.prefix) == (
        "JP",
        64500,
        "Example Carrier JP",
        "203.0.113.0/24",
    )
    assert r.resolve("203.0.113.200").asn == 64501
    assert (r.resolve("198.51.100.9").country, r.resolve("198.51.100.9").asn) == ("US", 64510)
    v6 = r.resolve("2001:db8:2::5")
    assert (v6.country, v6.asn, v6.prefix) == ("FR", 64530, "2001:db8:2::/48")
    unknown = r.resolve("198.18.0.1")
    assert (unknown.country, unknown.asn, unknown.as_org) == (None, None, None)
    assert "country" in r.describe() and asn.split("_")[0] in r.describe()["asn"]
    r.close()


def test_pyasn_without_names_has_no_organisation(geo_files: dict[str, Path]) -> None:
    o = resolver(geo_files, asn="ipasn").resolve("192.0.2.1")
    assert (o.asn, o.as_org) == (64520, None)
    assert o.provider == "AS64520"


def test_ipv4_mapped_ipv6_resolves_as_ipv4(geo_files: dict[str, Path]) -> None:
    r = resolver(geo_files)
    mapped = r.resolve("::ffff:203.0.113.7")
    plain = r.resolve("203.0.113.7")
    assert mapped == plain
    assert mapped.address == "203.0.113.7"


def test_prefix_widths(geo_files: dict[str, Path]) -> None:
    r = resolver(geo_files, ipv4_prefix=16, ipv6_prefix=32)
    assert r.resolve("203.0.113.7").prefix == "203.0.0.0/16"
    assert r.resolve("2001:db8:2::5").prefix == "2001:db8::/32"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.8.8.8", AddressClass.GLOBAL),
        ("2400:4050::1", AddressClass.GLOBAL),
        ("10.1.2.3", AddressClass.PRIVATE),
        ("172.16.0.1", AddressClass.PRIVATE),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("fd00::1", AddressClass.PRIVATE),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("100.64.0.1", AddressClass.CGNAT),
        ("100.127.255.254", AddressClass.CGNAT),
        ("169.254.1.1", AddressClass.LINK_LOCAL),
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("203.0.113.7", AddressClass.RESERVED),
        ("240.0.0.1", AddressClass.RESERVED),
        ("0.0.0.0", AddressClass.RESERVED),
        ("224.0.0.1", AddressClass.RESERVED),
        ("::ffff:10.0.0.1", AddressClass.PRIVATE),
    ],
)
def test_address_classes(text: str, expected: AddressClass) -> None:
    assert classify(parse_address(text)) is expected


@pytest.mark.parametrize(
    "text", ["", "not-an-ip", "999.1.1.1", "1.2.3", "::g", "1.2.3.4/24", "x" * 100]
)
def test_invalid_address(text: str, geo_files: dict[str, Path]) -> None:
    with pytest.raises(AddressError):
        resolver(geo_files).resolve(text)


def test_brackets_and_zone_ids_are_tolerated() -> None:
    assert str(parse_address("[2001:db8::1]")) == "2001:db8::1"
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"


def test_missing_and_broken_files_warn_and_give_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"\x00\x01not a database" * 100)
    caplog.set_level(logging.WARNING, logger="policy_server.origin")
    for country, asn in [
        (str(tmp_path / "missing.mmdb"), str(tmp_path / "missing.dat")),
        (str(garbage), str(garbage)),
        (str(tmp_path), str(tmp_path)),  # a directory
    ]:
        caplog.clear()
        r = OriginResolver.from_config(GeoipConfig(country_db=country, asn_db=asn, bundled=True))
        o = r.resolve("8.8.8.8")
        assert (o.country, o.asn, o.as_org) == (None, None, None)
        warnings = [rec.getMessage() for rec in caplog.records]
        assert any("geoip.country_db" in w for w in warnings)
        assert any("geoip.asn_db" in w for w in warnings)


def test_country_file_of_the_wrong_kind_is_refused(
    geo_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    r = OriginResolver.from_config(
        GeoipConfig(
            country_db=str(geo_files["asn_mmdb"]),
            asn_db=str(geo_files["country_mmdb"]),
            bundled=False,
        )
    )
    assert r.resolve("203.0.113.7").country is None
    assert "not a Country or City database" in caplog.text
    assert "not an ASN database" in caplog.text


def test_nothing_configured_and_no_bundled_data_is_all_unknown() -> None:
    r = OriginResolver.from_config(GeoipConfig(bundled=False))
    o = r.resolve("8.8.8.8")
    assert (o.country, o.asn, o.as_org, o.address_class) == (None, None, None, AddressClass.GLOBAL)
    assert r.describe() == {"country": "none (unknown)", "asn": "none (unknown)"}


def test_bundled_dataset_resolves_real_addresses() -> None:
    r = OriginResolver.from_config(GeoipConfig())
    google = r.resolve("8.8.8.8")
    assert google.country == "US" and google.as_org is not None and "GOOGLE" in google.as_org
    assert google.asn is None and google.provider == f"org:{google.as_org}"
    assert r.resolve("133.1.1.1").country == "JP"
    assert r.resolve("2001:4860:4860::8888").country == "US"
    private = r.resolve("10.0.0.1")
    assert (private.country, private.as_org) == (None, None)
    assert "geoip2fast" in r.describe()["country"]


def test_bundled_data_fills_only_the_part_without_a_file(geo_files: dict[str, Path]) -> None:
    r = OriginResolver.from_config(
        GeoipConfig(country_db=str(geo_files["country_mmdb"]), bundled=True)
    )
    assert r.resolve("203.0.113.7").country == "JP"  # from the file
    assert "geoip2fast" in r.describe()["asn"]
    assert r.resolve("8.8.8.8").as_org is not None


def test_lookup_command(
    geo_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[geoip]\ncountry_db = "{geo_files["country_mmdb"]}"\n'
        f'asn_db = "{geo_files["asn_mmdb"]}"\nbundled = false\n',
        encoding="utf-8",
    )
    assert main(["lookup", "203.0.113.7", "::ffff:192.0.2.1", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        '"country": "JP"' in lines[0]
        and '"asn": 64500' in lines[0]
        and '"class": "reserved"' in lines[0]
    )
    assert '"country": "DE"' in lines[1] and '"address": "192.0.2.1"' in lines[1]
    assert main(["lookup", "bogus", "-c", str(config)]) == 1


class Counting:
    """A lookup that counts the calls it passes on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def country(self, address: Any) -> Any:
        self.calls += 1
        return self.inner.country(address)

    def asn(self, address: Any) -> Any:
        self.calls += 1
        return self.inner.asn(address)

    def describe(self) -> str:
        return str(self.inner.describe())

    def close(self) -> None:
        self.inner.close()


def counted(tmp_path: Path, rows: list[Network], name: str = "") -> tuple[OriginResolver, Counting]:
    country = Counting(open_country_file(str(write_country_mmdb(tmp_path / f"c{name}", rows))))
    asn = Counting(open_asn_file(str(write_asn_mmdb(tmp_path / f"a{name}", rows)), None))
    return OriginResolver(GeoipConfig(bundled=False), country, asn), asn


def test_answers_for_a_whole_prefix_are_looked_up_once(tmp_path: Path) -> None:
    rows = [
        Network("11.0.0.0/16", "US", 65001, "Wide US"),
        Network("11.1.0.0/25", "DE", 65002, "Lower half DE"),
        Network("11.1.0.128/25", "FR", 65003, "Upper half FR"),
        Network("2001:db8:100::/40", "JP", 65004, "Wide JP"),
    ]
    r, asn = counted(tmp_path, rows)
    first = r.resolve("11.0.3.7")
    assert (first.country, first.asn, first.prefix) == ("US", 65001, "11.0.3.0/24")
    again = r.resolve("11.0.3.200")
    assert (again.country, again.asn, again.prefix, again.address) == (
        "US",
        65001,
        "11.0.3.0/24",
        "11.0.3.200",
    )
    assert asn.calls == 1  # the second address of that /24 from the cache
    # a /24 cut in two by the data is looked up address by address, and each gets its own
    assert (r.resolve("11.1.0.7").country, r.resolve("11.1.0.7").asn) == ("DE", 65002)
    assert (r.resolve("11.1.0.200").country, r.resolve("11.1.0.200").asn) == ("FR", 65003)
    assert asn.calls == 5  # each of the four resolves
    v6 = r.resolve("2001:db8:100:5::1")
    assert (v6.country, v6.prefix) == ("JP", "2001:db8:100::/48")
    assert r.resolve("2001:db8:100:6::9").asn == 65004
    assert asn.calls == 6
    # the light lookup of the allow path says the same as the full one
    for address in ("11.0.3.9", "11.0.3.10", "11.1.0.200", "2001:db8:100:7::1", "198.18.0.1"):
        origin = r.resolve(address)
        assert r.locate(address) == Place(origin.prefix, origin.country, origin.provider)
    with pytest.raises(AddressError):
        r.locate("not-an-address")


def test_new_geo_data_starts_an_empty_cache(tmp_path: Path) -> None:
    r, _ = counted(tmp_path, [Network("11.0.0.0/16", "US", 65001, "Old")], "old")
    assert r.resolve("11.0.3.7").country == "US"
    fresh, _ = counted(tmp_path, [Network("11.0.0.0/16", "CA", 65009, "New")], "new")
    r.take_data(fresh).close()
    moved = r.resolve("11.0.3.7")
    assert (moved.country, moved.asn, moved.as_org) == ("CA", 65009, "New")
    assert r.locate("11.0.3.8") == Place("11.0.3.0/24", "CA", "AS65009")


def test_the_light_lookup_reads_every_form_dovecot_or_a_proxy_sends(tmp_path: Path) -> None:
    r, _ = counted(tmp_path, [Network("11.0.0.0/16", "US", 65001, "Wide US")])
    plain = r.locate("11.0.3.9")
    assert plain == Place("11.0.3.0/24", "US", "AS65001")
    for form in ("::ffff:11.0.3.9", "[11.0.3.9]", " 11.0.3.9 "):
        assert r.locate(form) == plain, form
    assert r.locate("fe80::1%eth0").prefix == "fe80::/48"
    for bad in ("011.0.3.9", "11.0.3", ""):
        with pytest.raises(AddressError):
            r.locate(bad)
