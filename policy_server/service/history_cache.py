"""Histories of recently seen accounts, kept in memory to answer fresh repeat logins.

Most reports are a mail program polling from where it always does: a known origin, seen less
than ``[policy] touch_granularity_s`` ago, which writes nothing. Their answer needs only the
account's known origins, so the recorder keeps the histories it read, up to ``[storage]
history_cache`` accounts, and answers such a login without the store (no SQLite read on the
loop, no PostgreSQL round trip).

What can make a kept history wrong, and what the cache does about it:

* a login of the account that writes (through this process): the entry is dropped when the
  write starts and again once it is committed, so a read racing the write is not kept;
* a history that gains an origin or a mail program elsewhere (another process or node): the
  entry lacks it, so such a login is not a fresh repeat and takes the store's path, which
  decides against the history as stored; the cache never answers for what it does not hold;
* a history forgotten (``history forget``, the owner's page) in this process or any other: the
  store counts its own forgets, and every forget also changes the store's block version, which
  each process reads once a second; either change empties the cache;
* a kept origin the store evicted for a newer prefix of the same provider and country, or one
  not seen for ``touch_granularity_s``: the fresh-repeat rule stops answering from it within
  that time, as it would from the store.

Entries are bounded in number; the oldest go first (insertion order). Each is kept as plain
tuples of strings and numbers (``_pack``), which the garbage collector stops tracking after its
first look: a full collection then walks none of them, where tens of thousands of kept
``History`` objects made every one a pause of 60-140 ms with a million accounts
(bench/throughput.py, the saturation turns' p99). A login's own origin is unpacked on a hit
(``lookup``), the whole history only for a login that writes (``get``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ..model import AccountSettings, History, KnownOrigin, Location, Origin

#: a kept origin: KnownOrigin's fields in order, its location as (latitude, longitude, radius)
_Row = tuple[Any, ...]
#: a kept history: its origins, and its settings' fields
_Entry = tuple[tuple[_Row, ...], tuple[Any, ...]]


def _pack(history: History) -> _Entry:
    origins = tuple(
        (
            k.prefix,
            k.country,
            k.provider,
            k.as_org,
            k.first_seen,
            k.last_seen,
            k.count,
            k.network,
            k.clients,
            None
            if k.location is None
            else (k.location.latitude, k.location.longitude, k.location.radius_km),
            k.confirmed,
        )
        for k in history.origins
    )
    s = history.settings
    return origins, (s.notices, s.trip_country, s.trip_until, s.alerted_at)


def _known(row: _Row) -> KnownOrigin:
    """The KnownOrigin ``_pack`` made ``row`` of (tests/test_history_cache.py: a round trip of
    every field)."""
    location = row[9]
    return KnownOrigin(
        prefix=row[0],
        country=row[1],
        provider=row[2],
        as_org=row[3],
        first_seen=row[4],
        last_seen=row[5],
        count=row[6],
        network=row[7],
        clients=row[8],
        location=None if location is None else Location(*location),
        confirmed=row[10],
    )


class HistoryCache:
    """Up to ``size`` accounts' histories, valid while ``version()`` stays the same."""

    __slots__ = ("_entries", "_size", "_version", "_versions")

    def __init__(self, size: int, version: Callable[[], Hashable]) -> None:
        self._size = size
        self._versions = version
        self._version: Hashable = version()
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def version(self) -> Hashable:
        """The version now: pass it to :meth:`put` with a history read after this call."""
        version = self._versions()
        if version != self._version:
            self._entries.clear()
            self._version = version
        return version

    def _entry(self, account: str) -> _Entry | None:
        if self._versions() != self._version:
            self.version()
            return None
        return self._entries.get(account)

    def get(self, account: str) -> History | None:
        """The kept history of ``account``, if any."""
        entry = self._entry(account)
        if entry is None:
            return None
        origins, settings = entry
        return History(account, tuple(_known(row) for row in origins), AccountSettings(*settings))

    def lookup(self, account: str, origin: Origin) -> tuple[bool, KnownOrigin | None]:
        """Whether the history of ``account`` is kept and, if it is, its row for exactly this
        origin (same prefix, country and provider), if it has one (``History.find``)."""
        entry = self._entry(account)
        if entry is None:
            return False, None
        prefix, country, provider = origin.prefix, origin.country, origin.provider
        for row in entry[0]:
            if row[0] == prefix and row[1] == country and row[2] == provider:
                return True, _known(row)
        return True, None

    def put(self, account: str, history: History, version: Hashable) -> None:
        """Keep ``history``, read at ``version``, unless something changed since."""
        if self._size <= 0 or version != self._versions() or version != self._version:
            return
        entries = self._entries
        if account not in entries and len(entries) >= self._size:
            del entries[next(iter(entries))]
        entries[account] = _pack(history)

    def drop(self, account: str) -> None:
        self._entries.pop(account, None)

    def clear(self) -> None:
        self._entries.clear()
