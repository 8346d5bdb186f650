"""IP address -> Origin, through the configured lookup backends.

Country comes from a GeoIP2/GeoLite2 Country or City database, the provider from a pyasn file or
a GeoLite2-ASN database. With nothing configured for a part, the bundled dataset of the
``geoip2fast`` package serves it (GeoLite2-derived country and AS organisation names). A
configured file that cannot be opened is logged once and that part resolves to unknown: the
admin asked for that file, and unknown is the honest answer, not silently other data.

The files' answers are kept per network prefix (``[geoip] ipv4_prefix``/``ipv6_prefix``) when
the files say they hold for the whole prefix, so the next login from that network costs a
dictionary lookup; new geo data starts an empty cache.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, NamedTuple

from ..config import GeoipConfig
from ..logs import RateLimitedLog
from ..model import AddressClass, Location, Origin, provider_id
from .address import IPAddress, classify, network_prefix, one_class, parse_address, plain_ipv4
from .backends import (
    AsnLookup,
    BundledData,
    CountryLookup,
    LookupError_,
    open_asn_file,
    open_country_file,
)
from .networks import KnownNetworks

log = logging.getLogger("policy_server.origin")

#: How many prefixes' geo answers a resolver keeps (emptied when full): most logins come from
#: the networks of the last minutes, and a lookup in the files costs many times a hit.
CACHE_PREFIXES = 65_536


class Place(NamedTuple):
    """Where an address is, as far as blocks go: its network prefix, country and provider
    (``provider_id``)."""

    prefix: str
    country: str | None
    provider: str | None


class _Placed(NamedTuple):
    """An address's prefix and geo answers, and its ``Place`` made once for the prefix."""

    prefix: str
    country: str | None
    asn: int | None
    as_org: str | None
    place: Place
    location: Location | None
    # the class of every address of the prefix, when they all have one (see ``one_class``)
    address_class: AddressClass | None


class OriginResolver:
    """Resolves client addresses; cheap per call (in-memory readers, no I/O per lookup)."""

    def __init__(
        self,
        config: GeoipConfig,
        country: CountryLookup | None,
        asn: AsnLookup | None,
    ) -> None:
        self._config = config
        self._country = country
        self._asn = asn
        self._errors = RateLimitedLog(log)
        #: the admin's known networks; replaced as a whole on reload
        self.networks = KnownNetworks()
        # prefix (as an int, with the IP version in its lowest bit) -> its prefix and answers
        self._cache: dict[int, _Placed] = {}
        # the bits below the prefix of an IPv4 and of an IPv6 address
        self._drop = (32 - config.ipv4_prefix, 128 - config.ipv6_prefix)

    @classmethod
    def from_config(cls, config: GeoipConfig) -> OriginResolver:
        """Open what the config names; never raises for missing or broken files."""
        country: CountryLookup | None = None
        asn: AsnLookup | None = None
        if config.country_db:
            country = _open_or_warn("country_db", config.country_db, open_country_file)
        if config.asn_db:
            asn = _open_or_warn(
                "asn_db",
                config.asn_db,
                lambda path: open_asn_file(path, config.asn_names or None),
            )
        if config.bundled and (not config.country_db or not config.asn_db):
            bundled = BundledData.shared()
            if not config.country_db:
                country = bundled
            if not config.asn_db:
                asn = bundled
        return cls(config, country, asn)

    def resolve(self, text: str) -> Origin:
        """The origin of a client address; raises AddressError for text that is no address."""
        # the common case: a plain IPv4 address of a prefix already placed, no known networks
        number = -1 if self.networks else plain_ipv4(text)
        if number >= 0:
            hit = self._cache.get(self._key(number, True))
            if hit is not None and hit.address_class is not None:
                return Origin(
                    text,
                    hit.address_class,
                    hit.prefix,
                    hit.country,
                    hit.asn,
                    hit.as_org,
                    location=hit.location,
                )
        address = parse_address(text)
        # Every class is looked up: real data has no entry for private ranges, but an admin's
        # own database may map them.
        prefix, country, asn, as_org, _, location, address_class = self._placed(address)
        network = self.networks.match(address, asn) if self.networks else None
        return Origin(
            address=str(address),
            address_class=address_class or classify(address),
            prefix=prefix,
            country=country,
            asn=asn,
            as_org=as_org,
            network=network.category if network else None,
            network_label=network.label if network else None,
            location=location,
        )

    def locate(self, text: str) -> Place:
        """Only the prefix, country and provider of a client address (what a block names),
        without classifying it; raises AddressError for text that is no address."""
        # a plain address as Dovecot sends it finds its prefix without ``ipaddress``
        key = -1
        try:
            packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        except (OSError, ValueError):
            pass  # another form: parse_address reads it
        else:
            number = int.from_bytes(packed)
            if len(packed) == 4:
                key = self._key(number, True)
            elif number >> 32 != 0xFFFF:  # not IPv4-mapped, which parse_address makes IPv4
                key = self._key(number, False)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._placed(parse_address(text))
        return hit.place

    def _key(self, number: int, v4: bool) -> int:
        """The cache key of an address given as its number: its prefix, with the IP version in
        the lowest bit."""
        return (number >> self._drop[0 if v4 else 1]) << 1 | v4

    def _placed(self, address: IPAddress) -> _Placed:
        """The address's prefix and geo answers, from the cache when its prefix is there."""
        v4 = address.version == 4
        bits = self._config.ipv4_prefix if v4 else self._config.ipv6_prefix
        key = self._key(int(address), v4)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        country: str | None = None
        asn: int | None = None
        as_org: str | None = None
        location: Location | None = None
        widths: list[int | None] = []
        if self._country is not None:
            try:
                country, location, width = self._country.country(address)
                widths.append(width)
            except LookupError_ as exc:
                widths.append(None)
                self._errors.log(logging.WARNING, "country", "country lookup failed: %s", exc)
        if self._asn is not None:
            try:
                asn, as_org, width = self._asn.asn(address)
                widths.append(width)
            except LookupError_ as exc:
                widths.append(None)
                self._errors.log(logging.WARNING, "asn", "ASN lookup failed: %s", exc)
        prefix = network_prefix(address, bits, bits)
        place = Place(prefix, country, provider_id(asn, as_org))
        first = int(address) >> (address.max_prefixlen - bits) << (address.max_prefixlen - bits)
        address_class = classify(address) if one_class(first, bits, address.version) else None
        placed = _Placed(prefix, country, asn, as_org, place, location, address_class)
        # kept only when every answer holds for the whole prefix (a network no narrower)
        if all(width is not None and width <= bits for width in widths):
            if len(self._cache) >= CACHE_PREFIXES:
                self._cache.clear()
            self._cache[key] = placed
        return placed

    def take_data(self, other: OriginResolver) -> OriginResolver:
        """Use ``other``'s lookups from now on; returns a resolver holding the old ones, for
        the caller to close once requests in flight are done with them."""
        old = OriginResolver(self._config, self._country, self._asn)
        self._config, self._country, self._asn = other._config, other._country, other._asn
        other._country = other._asn = None
        self._cache, self._drop = {}, other._drop
        return old

    def missing(self, config: GeoipConfig) -> list[str]:
        """The configured geo files that are not in use (their lookups answer unknown)."""
        problems = []
        if config.country_db and self._country is None:
            problems.append(f"country_db {config.country_db} not loaded")
        if config.asn_db and self._asn is None:
            problems.append(f"asn_db {config.asn_db} not loaded")
        return problems

    def built(self) -> dict[str, float | None]:
        """When each part's data was built, where the data says (MaxMind files do)."""
        found: dict[str, float | None] = {}
        for part, lookup in (("country", self._country), ("asn", self._asn)):
            built = getattr(lookup, "built", None)
            found[part] = built() if callable(built) else None
        return found

    def describe(self) -> dict[str, str]:
        """What serves each part, for the start-up log and ``policy-server lookup``."""
        return {
            "country": self._country.describe() if self._country else "none (unknown)",
            "asn": self._asn.describe() if self._asn else "none (unknown)",
        }

    def close(self) -> None:
        for part in (self._country, self._asn):
            if part is not None:
                part.close()


def _open_or_warn(key: str, path: str, opener: Any) -> Any:
    try:
        return opener(path)
    except Exception as exc:  # any unreadable file: warn and carry on with unknowns
        log.warning("geoip.%s: cannot use %s (%s); those origins will be unknown", key, path, exc)
        return None
