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

Entries are bounded in number; the oldest go first (insertion order).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from ..model import History


class HistoryCache:
    """Up to ``size`` accounts' histories, valid while ``version()`` stays the same."""

    __slots__ = ("_entries", "_size", "_version", "_versions")

    def __init__(self, size: int, version: Callable[[], Hashable]) -> None:
        self._size = size
        self._versions = version
        self._version: Hashable = version()
        self._entries: dict[str, History] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def version(self) -> Hashable:
        """The version now: pass it to :meth:`put` with a history read after this call."""
        version = self._versions()
        if version != self._version:
            self._entries.clear()
            self._version = version
        return version

    def get(self, account: str) -> History | None:
        if self._versions() != self._version:
            self.version()
            return None
        return self._entries.get(account)

    def put(self, account: str, history: History, version: Hashable) -> None:
        """Keep ``history``, read at ``version``, unless something changed since."""
        if self._size <= 0 or version != self._versions() or version != self._version:
            return
        entries = self._entries
        if account not in entries and len(entries) >= self._size:
            del entries[next(iter(entries))]
        entries[account] = history

    def drop(self, account: str) -> None:
        self._entries.pop(account, None)

    def clear(self) -> None:
        self._entries.clear()
