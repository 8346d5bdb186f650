"""The resolver's shortcuts for addresses: one class per prefix, and plain IPv4 text.

A prefix said to be of one class must give that class for every address in it, whichever
address of it came first; the edges come from ``ipaddress``'s own tables, so the check runs
on the special networks themselves and at random.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from policy_server.origin.address import (
    _EDGES,
    classify,
    is_address,
    one_class,
    parse_address,
    plain_ipv4,
)


def _same_class_throughout(first: int, bits: int, version: int, probes: list[int]) -> None:
    size = 1 << ((32 if version == 4 else 128) - bits)
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if not one_class(first, bits, version):
        return
    expected = classify(make(first))
    for probe in (*probes, size - 1, size // 2):
        assert classify(make(first + probe % size)) == expected


@settings(max_examples=400)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([24, 16, 20, 28, 32]),
    st.lists(st.integers(0, 2**32), max_size=8),
)
def test_an_ipv4_prefix_of_one_class_has_it_throughout(
    number: int, bits: int, probes: list[int]
) -> None:
    first = number >> (32 - bits) << (32 - bits)
    _same_class_throughout(first, bits, 4, probes)


@settings(max_examples=400)
@given(
    st.integers(0, 2**128 - 1),
    st.sampled_from([48, 32, 56, 64]),
    st.lists(st.integers(0, 2**128), max_size=8),
)
def test_an_ipv6_prefix_of_one_class_has_it_throughout(
    number: int, bits: int, probes: list[int]
) -> None:
    first = number >> (128 - bits) << (128 - bits)
    _same_class_throughout(first, bits, 6, probes)


def test_the_special_networks_edges_split_their_prefixes() -> None:
    for version, bits in ((4, 24), (6, 48)):
        width = 32 if version == 4 else 128
        for edge in _EDGES[version]:
            for near in (edge - 1, edge):
                if not 0 <= near < 1 << width:
                    continue
                first = near >> (width - bits) << (width - bits)
                _same_class_throughout(first, bits, version, [near - first, near - first + 1])
    # a /24 that holds narrower special networks is not taken as one class
    assert not one_class(int(ipaddress.IPv4Address("192.0.0.0")), 24, 4)
    assert not one_class(0, 24, 4)  # 0.0.0.0 is unspecified, 0.0.0.1 private
    assert one_class(int(ipaddress.IPv4Address("203.0.113.0")), 24, 4)


def test_plain_ipv4_is_exactly_what_parse_address_reads_back_the_same() -> None:
    for text in ("203.0.113.7", "0.0.0.0", "255.255.255.255", "10.1.2.3"):
        assert plain_ipv4(text) == int(parse_address(text))
        assert is_address(text)
    # everything else goes the long way, and is_address still says what parse_address says
    for text in ("01.2.3.4", "1.2.3", " 1.2.3.4", "1.2.3.4 ", "[1.2.3.4]", "::ffff:1.2.3.4",
                 "2001:db8::1", "1.2.3.4.5", "256.1.1.1", "0x1.2.3.4", ""):  # fmt: skip
        assert plain_ipv4(text) == -1
        try:
            parse_address(text)
            parses = True
        except ValueError:
            parses = False
        assert is_address(text) == parses
