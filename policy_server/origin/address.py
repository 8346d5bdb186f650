"""Client addresses: parsing as Dovecot sends them, classification, and network prefixes."""

from __future__ import annotations

import bisect
import ipaddress
import socket

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


def _edges(version: int) -> tuple[int, ...]:
    """The addresses where :func:`classify` can change its answer: the first address of each
    network it (or ``ipaddress``) tests membership in, and the one after the last."""
    # the tables ipaddress keeps its special networks in (not typed: private to the module)
    constants = getattr(ipaddress, "_IPv4Constants" if version == 4 else "_IPv6Constants")
    found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        net for net in (_CGNAT, *_PRIVATE) if net.version == version
    ]
    # the unspecified and loopback addresses, which ipaddress tests by value for IPv6
    found.append(ipaddress.ip_network("0.0.0.0/32" if version == 4 else "::/128"))
    if version == 6:
        found.append(ipaddress.ip_network("::1/128"))
    for value in vars(constants).values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                found.append(item)
            elif isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                found.append(ipaddress.ip_network(item))
    edges = {int(net.network_address) for net in found}
    edges.update(int(net.broadcast_address) + 1 for net in found)
    return tuple(sorted(edges))


_EDGES = {4: _edges(4), 6: _edges(6)}


def one_class(first: int, bits: int, version: int) -> bool:
    """Whether every address of the network of ``bits`` bits from address number ``first`` is
    in one class (no edge of :func:`_edges` inside it): then :func:`classify` of any one of
    them holds for all."""
    size = 1 << ((32 if version == 4 else 128) - bits)
    edges = _EDGES[version]
    # the first edge above ``first``: inside the network, the class may change there
    i = bisect.bisect_right(edges, first)
    return i == len(edges) or edges[i] >= first + size


def plain_ipv4(text: str) -> int:
    """The number of an IPv4 address written the way Dovecot writes one (``203.0.113.7``), or
    -1 for any other text (IPv6, brackets, leading zeros, spaces), which
    :func:`parse_address` reads."""
    if ":" in text:
        return -1
    try:
        packed = socket.inet_aton(text) if text.count(".") == 3 else b""
    except OSError:
        return -1
    if len(packed) != 4 or socket.inet_ntoa(packed) != text:
        return -1
    return int.from_bytes(packed)


def is_address(text: str) -> bool:
    """Whether ``text`` is a client address :func:`parse_address` accepts."""
    if plain_ipv4(text) >= 0:
        return True
    try:
        parse_address(text)
    except AddressError:
        return False
    return True
