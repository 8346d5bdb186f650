"""Lookup backends: country and ASN data from MaxMind DB files, pyasn files, or bundled data."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path
from typing import Any, ClassVar, Protocol

import geoip2.database
import geoip2.errors
import maxminddb
import pyasn

from .address import IPAddress

# What a lookup may raise for a damaged file or an odd address, beyond "not found".
LookupError_ = (ValueError, OSError, TypeError, maxminddb.InvalidDatabaseError, KeyError)


class CountryLookup(Protocol):
    def country(self, address: IPAddress) -> str | None: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class AsnLookup(Protocol):
    def asn(self, address: IPAddress) -> tuple[int | None, str | None]: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class _MaxMindFile:
    """What every MaxMind database file offers, whatever its records: a description, its build
    time, and closing."""

    def __init__(self, path: str, reader: geoip2.database.Reader) -> None:
        self._reader = reader
        meta = reader.metadata()
        built = datetime.datetime.fromtimestamp(meta.build_epoch, datetime.UTC).date()
        self._description = f"{path} ({meta.database_type}, built {built})"

    def describe(self) -> str:
        return self._description

    def built(self) -> float:
        """When the database was built (unix time)."""
        return float(self._reader.metadata().build_epoch)

    def close(self) -> None:
        self._reader.close()


class MaxMindCountry(_MaxMindFile):
    """A GeoIP2/GeoLite2 Country or City database through geoip2's reader."""

    def __init__(self, path: str) -> None:
        super().__init__(path, geoip2.database.Reader(path))
        database_type = self._reader.metadata().database_type
        if "City" in database_type:
            self._lookup: Any = self._reader.city
        elif "Country" in database_type:
            self._lookup = self._reader.country
        else:
            self._reader.close()
            raise ValueError(f"{database_type} is not a Country or City database")

    def country(self, address: IPAddress) -> str | None:
        try:
            record = self._lookup(address)
        except geoip2.errors.AddressNotFoundError:
            return None
        code: str | None = record.country.iso_code or record.registered_country.iso_code
        return code


class MaxMindAsn(_MaxMindFile):
    """A GeoLite2-ASN (or GeoIP2-ISP) database through geoip2's reader."""

    def asn(self, address: IPAddress) -> tuple[int | None, str | None]:
        try:
            record = self._reader.asn(address)
        except geoip2.errors.AddressNotFoundError:
            return None, None
        return record.autonomous_system_number, record.autonomous_system_organization


class PyasnAsn:
    """An ipasn file (``prefix<TAB>asn`` lines, plain or gzip) through pyasn."""

    def __init__(self, path: str, names_path: str | None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        self._db = pyasn.pyasn(path, as_names_file=names_path)
        self._names = names_path is not None
        self._description = f"{path} (pyasn{', with AS names' if names_path else ''})"

    def asn(self, address: IPAddress) -> tuple[int | None, str | None]:
        number, _prefix = self._db.lookup(str(address))
        if number is None:
            return None, None
        name = self._db.get_as_name(number) if self._names else None
        return int(number), name or None

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
        reader = geoip2.database.Reader(path)
    except (maxminddb.InvalidDatabaseError, ValueError):
        return PyasnAsn(path, names_path)
    database_type = reader.metadata().database_type
    if "ASN" not in database_type and "ISP" not in database_type:
        reader.close()
        raise ValueError(f"{database_type} is not an ASN database")
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

    def country(self, address: IPAddress) -> str | None:
        return self._lookup(address)[0]

    def asn(self, address: IPAddress) -> tuple[int | None, str | None]:
        return None, self._lookup(address)[1]

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        pass
