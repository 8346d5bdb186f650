"""Client addresses: parsing as Dovecot sends them, classification, and network prefixes."""

from __future__ import annotations

import ipaddress

from ..model import AddressClass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
# Private in the everyday sense (RFC 1918, unique local); Python's is_private also covers
# documentation and benchmarking ranges, which are reserved, not someone's LAN.
_PRIVATE = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
)


class AddressError(ValueError):
    """The text is not an IP address."""


def parse_address(text: str) -> IPAddress:
    """Parse a client address; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes plain IPv4.

    Dovecot sends plain text (``203.0.113.7``, ``2001:db8::1``); brackets and a zone id are
    tolerated because some proxies add them.
    """
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if not candidate or len(candidate) > 64:
        raise AddressError(f"not an IP address: {text[:64]!r}")
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        raise AddressError(f"not an IP address: {text[:64]!r}") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(candidate.split("%", 1)[0])
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def classify(address: IPAddress) -> AddressClass:
    """The address class. It is reported beside the geo data, which is consulted for every
    class: admins may map their own private ranges in a custom database."""
    if address.is_loopback:
        return AddressClass.LOOPBACK
    if address.is_link_local:
        return AddressClass.LINK_LOCAL
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return AddressClass.CGNAT
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return AddressClass.RESERVED
    if any(address in net for net in _PRIVATE if net.version == address.version):
        return AddressClass.PRIVATE
    if not address.is_global:
        return AddressClass.RESERVED
    return AddressClass.GLOBAL


def network_prefix(address: IPAddress, ipv4_bits: int, ipv6_bits: int) -> str:
    """The address's network at the configured width, e.g. ``203.0.113.0/24``."""
    if isinstance(address, ipaddress.IPv4Address):
        drop = 32 - ipv4_bits
        network: IPAddress = ipaddress.IPv4Address(int(address) >> drop << drop)
        return f"{network}/{ipv4_bits}"
    drop = 128 - ipv6_bits
    network = ipaddress.IPv6Address(int(address) >> drop << drop)
    return f"{network}/{ipv6_bits}"
