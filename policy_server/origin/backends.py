"""Lookup backends: country and ASN data from MaxMind DB files, pyasn files, or bundled data."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import maxminddb
import pyasn

from ..model import Location
from .address import IPAddress

# What a lookup may raise for a damaged file or an odd address, beyond "not found".
LookupError_ = (ValueError, OSError, TypeError, maxminddb.InvalidDatabaseError, KeyError)

#: An answer and the prefix length of the network it holds for: every address of that network
#: gets the same answer. None when the lookup cannot say (the answer is then for the address
#: alone).
Width = int | None


class CountryLookup(Protocol):
    def country(self, address: IPAddress) -> tuple[str | None, Location | None, Width]: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class AsnLookup(Protocol):
    def asn(self, address: IPAddress) -> tuple[int | None, str | None, Width]: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class _MaxMindFile:
    """What every MaxMind database file offers, whatever its records: a lookup with the width
    of the network it found, a description, its build time, and closing."""

    #: words one of which the file's database type must hold, and what such a file is
    TYPES: ClassVar[tuple[str, ...]] = ()
    KIND: ClassVar[str] = ""

    def __init__(self, path: str, reader: maxminddb.Reader | None = None) -> None:
        self._reader = reader if reader is not None else maxminddb.open_database(path)
        meta = self._reader.metadata()
        if not any(word in meta.database_type for word in self.TYPES):
            self._reader.close()
            raise ValueError(f"{meta.database_type} is not {self.KIND}")
        built = datetime.datetime.fromtimestamp(meta.build_epoch, datetime.UTC).date()
        self._description = f"{path} ({meta.database_type}, built {built})"

    def _record(self, address: IPAddress) -> tuple[Mapping[str, Any], int]:
        """The address's record ({} when the file has none) and its network's prefix length
        (for IPv4 in IPv4 terms, in a file of IPv6 trees too)."""
        record, width = self._reader.get_with_prefix_len(address)
        return (record if isinstance(record, dict) else {}), width

    def describe(self) -> str:
        return self._description

    def built(self) -> float:
        """When the database was built (unix time)."""
        return float(self._reader.metadata().build_epoch)

    def close(self) -> None:
        self._reader.close()


class MaxMindCountry(_MaxMindFile):
    """A GeoIP2/GeoLite2 Country or City database."""

    TYPES = ("City", "Country")
    KIND = "a Country or City database"

    def country(self, address: IPAddress) -> tuple[str | None, Location | None, Width]:
        """The country's ISO code and, in a City database, the ``location``."""
        record, width = self._record(address)
        found = None
        for key in ("country", "registered_country"):
            place = record.get(key)
            code = place.get("iso_code") if isinstance(place, dict) else None
            if isinstance(code, str) and code:
                found = code
                break
        return found, _location(record.get("location")), width


def _location(value: Any) -> Location | None:
    """A City record's ``location`` (latitude, longitude, accuracy_radius in km), when it has
    valid coordinates."""
    if not isinstance(value, dict):
        return None
    lat, lon, radius = value.get("latitude"), value.get("longitude"), value.get("accuracy_radius")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    km = float(radius) if isinstance(radius, int | float) and radius >= 0 else 0.0
    return Location(float(lat), float(lon), km)


class MaxMindAsn(_MaxMindFile):
    """A GeoLite2-ASN (or GeoIP2-ISP) database."""

    TYPES = ("ASN", "ISP")
    KIND = "an ASN database"

    def asn(self, address: IPAddress) -> tuple[int | None, str | None, Width]:
        record, width = self._record(address)
        number = record.get("autonomous_system_number")
        name = record.get("autonomous_system_organization")
        return (
            number if isinstance(number, int) else None,
            name if isinstance(name, str) and name else None,
            width,
        )


class PyasnAsn:
    """An ipasn file (``prefix<TAB>asn`` lines, plain or gzip) through pyasn."""

    def __init__(self, path: str, names_path: str | None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        self._db = pyasn.pyasn(path, as_names_file=names_path)
        self._names = names_path is not None
        self._description = f"{path} (pyasn{', with AS names' if names_path else ''})"

    def asn(self, address: IPAddress) -> tuple[int | None, str | None, Width]:
        number, prefix = self._db.lookup(str(address))
        if number is None:
            return None, None, None
        name = self._db.get_as_name(number) if self._names else None
        width = None
        if isinstance(prefix, str) and "/" in prefix:
            width = int(prefix.rpartition("/")[2])
        return int(number), name or None, width

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        pass


def open_country_file(path: str) -> CountryLookup:
    return MaxMindCountry(path)


def open_asn_file(path: str, names_path: str | None) -> AsnLookup:
    """A GeoLite2-ASN .mmdb when the file is a MaxMind DB, otherwise a pyasn file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        reader = maxminddb.open_database(path)
    except (maxminddb.InvalidDatabaseError, ValueError):
        return PyasnAsn(path, names_path)
    return MaxMindAsn(path, reader)


class BundledData:
    """The GeoLite2-derived country and AS-organisation data shipped in ``geoip2fast``.

    It has no AS numbers, so providers compare by organisation name. It serves both parts, so
    the last answer is kept: a resolve asks for the country and then the ASN of one address.
    """

    DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"
    _shared: ClassVar[BundledData | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        from geoip2fast import GeoIP2Fast

        self._db = GeoIP2Fast(geoip2fast_data_file=self.DATA_FILE)
        info = self._db.get_database_info()
        self._description = f"bundled geoip2fast data ({info.get('source_info', 'unknown source')})"
        self._last: tuple[str, str | None, str | None] = ("", None, None)

    @classmethod
    def shared(cls) -> BundledData:
        """One copy per process: loading takes a third of a second and tens of megabytes."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _lookup(self, address: IPAddress) -> tuple[str | None, str | None]:
        text = str(address)
        if self._last[0] != text:
            detail = self._db.lookup(text)
            country = getattr(detail, "country_code", "") or ""
            org = getattr(detail, "asn_name", "") or ""
            private = bool(getattr(detail, "is_private", False))
            # "--" and IANA pseudo-entries mark reserved space, not a place or a provider.
            self._last = (
                text,
                country if len(country) == 2 and country.isalpha() and not private else None,
                org if org and not private and org != "IANA.ORG" else None,
            )
        return self._last[1], self._last[2]

    def country(self, address: IPAddress) -> tuple[str | None, Location | None, Width]:
        return self._lookup(address)[0], None, None

    def asn(self, address: IPAddress) -> tuple[int | None, str | None, Width]:
        return None, self._lookup(address)[1], None

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        pass
