"""The admin's known networks: CIDRs and AS numbers with a category and a label.

Lines read ``<CIDR or AS number> <category> [label…]``; ``#`` starts a comment. A lookup is one
set probe per distinct prefix length in the lists (a handful), so it costs little on the
request path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import NETWORK_CATEGORIES, NetworksConfig
from .address import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworksError(ValueError):
    """Lists that cannot be used; ``problems`` names each bad line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class KnownNetwork:
    category: str
    label: str
    source: str


@dataclass
class KnownNetworks:
    """CIDR and ASN entries; the most specific CIDR wins, then the ASN."""

    by_network: dict[IPNetwork, KnownNetwork] = field(default_factory=dict)
    by_asn: dict[int, KnownNetwork] = field(default_factory=dict)
    _lengths: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for network in self.by_network:
            lengths[network.version].add(network.prefixlen)
        self._lengths = {v: sorted(ls, reverse=True) for v, ls in lengths.items()}

    def __len__(self) -> int:
        return len(self.by_network) + len(self.by_asn)

    def match(self, address: IPAddress, asn: int | None) -> KnownNetwork | None:
        for length in self._lengths.get(address.version, ()):
            network = ipaddress.ip_network((address, length), strict=False)
            found = self.by_network.get(network)
            if found is not None:
                return found
        if asn is not None:
            return self.by_asn.get(asn)
        return None

    @classmethod
    def parse(cls, lines: Iterable[tuple[str, int, str]]) -> KnownNetworks:
        """Entries from (source, line number, text); raises NetworksError listing bad lines."""
        by_network: dict[IPNetwork, KnownNetwork] = {}
        by_asn: dict[int, KnownNetwork] = {}
        problems: list[str] = []
        for source, number, raw in lines:
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split(None, 2)
            where = f"{source}:{number}"
            if len(parts) < 2:
                problems.append(f"{where}: expected '<CIDR or AS number> <category> [label]'")
                continue
            target, category = parts[0], parts[1].lower()
            label = parts[2].strip() if len(parts) > 2 else ""
            if category not in NETWORK_CATEGORIES:
                problems.append(
                    f"{where}: unknown category {category!r} (use {', '.join(NETWORK_CATEGORIES)})"
                )
                continue
            entry = KnownNetwork(category, label, where)
            upper = target.upper()
            if upper.startswith("AS") and upper[2:].isdigit():
                by_asn[int(upper[2:])] = entry
                continue
            try:
                by_network[ipaddress.ip_network(target, strict=False)] = entry
            except ValueError:
                problems.append(f"{where}: {target!r} is neither a CIDR nor an AS number")
        if problems:
            raise NetworksError(problems)
        return cls(by_network, by_asn)

    @classmethod
    def load(cls, config: NetworksConfig) -> KnownNetworks:
        """The lists a config names; raises NetworksError (bad lines, unreadable files)."""
        lines: list[tuple[str, int, str]] = [
            ("networks.entries", index + 1, text) for index, text in enumerate(config.entries)
        ]
        problems: list[str] = []
        for name in config.files:
            try:
                text = Path(name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{name}: cannot read: {exc}")
                continue
            lines.extend((name, number, line) for number, line in enumerate(text.splitlines(), 1))
        if problems:
            raise NetworksError(problems)
        return cls.parse(lines)
