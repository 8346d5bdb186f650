"""Writers for small geo-data fixture files (MaxMind DB and pyasn formats).

A plain module, importable from tests, benchmarks and end-to-end setups alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

COUNTRY_NAMES: dict[str, str] = {
    "JP": "Japan",
    "US": "United States",
    "DE": "Germany",
    "FR": "France",
}


@dataclass(frozen=True, slots=True)
class Network:
    """One network of a fixture dataset."""

    cidr: str
    country: str | None = None
    asn: int | None = None
    as_org: str | None = None
    city: str | None = None


# Every test and the end-to-end suite rely on exactly these rows; add rows rather than change
# them. Loopback is mapped on purpose so a real Dovecot talking from 127.x resolves.
STANDARD_NETWORKS: tuple[Network, ...] = (
    Network("203.0.113.0/25", "JP", 64500, "Example Carrier JP", "Tokyo"),
    Network("203.0.113.128/25", "JP", 64501, "Other Provider JP", "Osaka"),
    Network("198.51.100.0/24", "US", 64510, "Example Hosting US", "Ashburn"),
    Network("192.0.2.0/24", "DE", 64520, "Example Net DE", "Frankfurt am Main"),
    Network("2001:db8:1::/48", "JP", 64500, "Example Carrier JP", "Tokyo"),
    Network("2001:db8:2::/48", "FR", 64530, "Example Telecom FR", "Paris"),
    Network("127.0.0.0/8", "JP", 64500, "Example Carrier JP", "Tokyo"),
)

# Where a City database places each city: (latitude, longitude, accuracy_radius in km), as
# MaxMind's ``location`` has them.
CITY_LOCATIONS: dict[str, tuple[float, float, int]] = {
    "Tokyo": (35.6895, 139.6917, 20),
    "Osaka": (34.6937, 135.5023, 20),
    "Ashburn": (39.0438, -77.4874, 20),
    "Frankfurt am Main": (50.1109, 8.6821, 20),
    "Paris": (48.8566, 2.3522, 20),
}

# Addresses the standard dataset deliberately does not cover.
UNMAPPED_ADDRESSES: tuple[str, ...] = ("198.18.0.1", "2001:db8:ff::1")


Entry = Network | tuple[Any, ...]
"""A ``Network`` or a tuple in its field order: ``(cidr, country, asn, as_org, city)``."""


def _networks(entries: Iterable[Entry]) -> list[Network]:
    return [e if isinstance(e, Network) else Network(*e) for e in entries]


def _country_record(code: str) -> dict[str, Any]:
    return {"iso_code": code, "names": {"en": COUNTRY_NAMES.get(code, code)}}


def _country_content(network: Network) -> dict[str, Any]:
    assert network.country is not None
    country = _country_record(network.country)
    return {"country": country, "registered_country": dict(country)}


def _new_writer(database_type: str, description: str) -> MMDBWriter:
    # An IPv6 tree with IPv4 aliased under ::/96 is what MaxMind ships; readers then answer
    # both families from one file.
    return MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
    )


def _write(writer: MMDBWriter, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return path


def write_mmdb(
    path: Path | str,
    records: Iterable[tuple[str, Mapping[str, Any]]],
    database_type: str,
) -> Path:
    """Write arbitrary ``(cidr, record)`` pairs as a MaxMind DB of ``database_type``."""
    writer = _new_writer(database_type, f"test fixture ({database_type})")
    for cidr, record in records:
        writer.insert_network(IPSet([cidr]), dict(record))
    return _write(writer, Path(path))


def write_country_mmdb(
    path: Path | str,
    entries: Iterable[Entry],
    database_type: str = "GeoLite2-Country",
) -> Path:
    """A Country database shaped like MaxMind's; networks without a country are skipped."""
    records = [(n.cidr, _country_content(n)) for n in _networks(entries) if n.country]
    return write_mmdb(path, records, database_type)


def write_city_mmdb(
    path: Path | str,
    entries: Iterable[Entry],
    database_type: str = "GeoLite2-City",
) -> Path:
    """A City database shaped like MaxMind's: ``country``, ``registered_country``, ``city``
    and ``location`` (``CITY_LOCATIONS``)."""
    records = []
    for network in _networks(entries):
        if not network.country:
            continue
        content = _country_content(network)
        if network.city:
            content["city"] = {"names": {"en": network.city}}
            if network.city in CITY_LOCATIONS:
                lat, lon, radius = CITY_LOCATIONS[network.city]
                content["location"] = {
                    "latitude": lat,
                    "longitude": lon,
                    "accuracy_radius": radius,
                }
        records.append((network.cidr, content))
    return write_mmdb(path, records, database_type)


def write_asn_mmdb(path: Path | str, entries: Iterable[Entry]) -> Path:
    """A GeoLite2-ASN database; networks without an ASN are skipped."""
    records = []
    for network in _networks(entries):
        if network.asn is None:
            continue
        content: dict[str, Any] = {"autonomous_system_number": network.asn}
        if network.as_org:
            content["autonomous_system_organization"] = network.as_org
        records.append((network.cidr, content))
    return write_mmdb(path, records, "GeoLite2-ASN")


def write_ipasn(path: Path | str, entries: Iterable[Entry]) -> Path:
    """A pyasn ipasn file: ``NETWORK/BITS<TAB>ASN`` lines."""
    lines = ["; pyasn ipasn test fixture"]
    lines += [f"{n.cidr}\t{n.asn}" for n in _networks(entries) if n.asn is not None]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def write_asn_names(path: Path | str, mapping: Mapping[int, str]) -> Path:
    """An AS-names JSON file as pyasn reads it: ``{"64500": "name", ...}``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {str(asn): name for asn, name in sorted(mapping.items())}
    target.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return target


def standard_asn_names() -> dict[int, str]:
    return {n.asn: n.as_org for n in STANDARD_NETWORKS if n.asn is not None and n.as_org}


def write_standard_geodata(directory: Path | str) -> dict[str, Path]:
    """Write every fixture format from ``STANDARD_NETWORKS`` into ``directory``.

    Keys: ``country_mmdb``, ``city_mmdb``, ``asn_mmdb``, ``ipasn``, ``asn_names``.
    """
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    return {
        "country_mmdb": write_country_mmdb(base / "country.mmdb", STANDARD_NETWORKS),
        "city_mmdb": write_city_mmdb(base / "city.mmdb", STANDARD_NETWORKS),
        "asn_mmdb": write_asn_mmdb(base / "asn.mmdb", STANDARD_NETWORKS),
        "ipasn": write_ipasn(base / "ipasn.dat", STANDARD_NETWORKS),
        "asn_names": write_asn_names(base / "asn-names.json", standard_asn_names()),
    }
