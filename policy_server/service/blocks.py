"""Accounts' blocks of origins, in memory, for the ``allow`` path.

The set holds every active block of the store, by account, and reads them again in the
background (``run``): a read that finds the store's block version unchanged costs one tiny
query, so a block made through any node is enforced by every node within a refresh or two.
What this process adds or clears is read back at once.

``allow`` asks ``refusing`` only for an account with blocks; an empty set or an account
without blocks costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from ..accounts import normalize_login
from ..config import AccountsConfig
from ..logs import RateLimitedLog
from ..model import Origin
from ..store.base import Block, BlockKind, Blocks, BlockTarget, StoreError
from .metrics import Metrics

log = logging.getLogger("policy_server.blocks")
_limited = RateLimitedLog(log)

#: how often the set reads the store's block version
REFRESH_S = 1.0

Scope = Literal["provider", "prefix"]


def target_of(prefix: str, provider: str | None, country: str | None, scope: Scope) -> BlockTarget:
    """What blocking an origin blocks: its provider in its country (``scope="provider"``, its
    prefix when the provider is unknown), or its prefix."""
    if scope == "provider" and provider is not None:
        return BlockTarget(BlockKind.PROVIDER, provider, country or "")
    return BlockTarget(BlockKind.PREFIX, prefix)


def target_for(origin: Origin, scope: Scope) -> BlockTarget:
    """What blocking ``origin`` blocks (see :func:`target_of`)."""
    return target_of(origin.prefix, origin.provider, origin.country, scope)


class Placed(Protocol):
    """What a block is checked against: an ``Origin``, or the resolver's lighter ``Place``."""

    @property
    def prefix(self) -> str: ...
    @property
    def country(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...


# How the set files a target: the prefix text alone (it holds a "/"), or the pair (provider,
# country). Plain strings and tuples hash at once, so the allow path builds no object to ask;
# and a set of strings, tuples of them and floats is one the garbage collector soon stops
# walking, however many blocks it holds.
_Key = str | tuple[str, str]


def _keys_of(origin: Placed) -> tuple[_Key, ...]:
    """The keys of every target a block could name that covers ``origin`` (whatever the scope
    was): its provider in its country, when known, then its prefix."""
    provider = origin.provider
    if provider is None:
        return (origin.prefix,)
    return ((provider, origin.country or ""), origin.prefix)


def targets_of(origin: Placed) -> tuple[BlockTarget, ...]:
    """Every target a block could name that covers ``origin`` (whatever the scope was)."""
    return tuple(_target(key) for key in _keys_of(origin))


def _key(target: BlockTarget) -> _Key:
    if target.kind is BlockKind.PREFIX:
        return target.key
    return (target.key, target.country)


def _target(key: _Key) -> BlockTarget:
    if isinstance(key, str):
        return BlockTarget(BlockKind.PREFIX, key)
    return BlockTarget(BlockKind.PROVIDER, key[0], key[1])


class BlockSet:
    """Every active block, by account, as last read from the store."""

    def __init__(
        self,
        store: Blocks,
        metrics: Metrics | None = None,
        refresh_s: float = REFRESH_S,
        *,
        accounts: AccountsConfig | None = None,
        locate: Callable[[str], Placed] | None = None,
    ) -> None:
        self._store = store
        # for ``refuses``: how logins become accounts, and where an address is
        self._accounts = accounts or AccountsConfig()
        self._locate = locate
        self._metrics = metrics
        self._refresh_s = refresh_s
        self._version = -1
        # account -> its blocks' keys -> until
        self._by_account: dict[str, dict[_Key, float]] = {}
        self._lock = asyncio.Lock()

    def __bool__(self) -> bool:
        return bool(self._by_account)

    @property
    def version(self) -> int:
        """The store's block version the set was last read at (it changes with a forget)."""
        return self._version

    def __len__(self) -> int:
        return sum(len(blocks) for blocks in self._by_account.values())

    def of(self, account: str) -> dict[BlockTarget, float] | None:
        """The account's blocks (target -> until), None when it has none."""
        blocks = self._by_account.get(account)
        if not blocks:
            return None
        return {_target(key): until for key, until in blocks.items()}

    def refusing(self, account: str, origin: Placed, now: float) -> BlockTarget | None:
        """The active block of ``account`` that covers ``origin``, if any."""
        blocks = self._by_account.get(account)
        if not blocks:
            return None
        for key in _keys_of(origin):
            until = blocks.get(key)
            if until is not None and until > now:
                return _target(key)
        return None

    def refuses(self, login: str, remote: str, now: float) -> BlockTarget | None:
        """The active block that covers a login of ``login`` from ``remote``, if any: the
        ``allow`` check, for which an account without blocks costs one dictionary lookup.
        Raises what placing the address raises (AddressError for no address)."""
        by_account = self._by_account
        if not by_account:
            return None
        account = normalize_login(login, self._accounts)
        if account not in by_account or self._locate is None:
            return None
        return self.refusing(account, self._locate(remote), now)

    async def refresh(self, force: bool = False) -> bool:
        """Read the blocks again if the store's version changed (``force``: in any case);
        True when the set was replaced. Raises StoreError."""
        async with self._lock:
            now = time.time()
            found = await self._store.active_blocks(now, -1 if force else self._version)
            if found is not None:
                by_account: dict[str, dict[_Key, float]] = {}
                for block in found.blocks:
                    by_account.setdefault(block.account, {})[_key(block.target)] = block.until
                self._by_account = by_account
                self._version = found.version
            if self._metrics is not None:
                self._metrics.blocks_active.set(
                    sum(1 for b in self._by_account.values() for u in b.values() if u > now)
                )
            return found is not None

    async def add(self, block: Block, now: float) -> Block:
        """Store a block (or extend the same one) and enforce it here at once."""
        stored = await self._store.add_block(block, now)
        await self.refresh()
        return stored

    async def clear(self, account: str, targets: Sequence[BlockTarget] | None = None) -> int:
        """Delete the account's blocks (of ``targets`` only when given), here at once too."""
        cleared = await self._store.clear_blocks(account, targets)
        await self.refresh()
        return cleared

    async def run(self) -> None:
        """Refresh for ever, every ``refresh_s``; a failed read keeps the set in use."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except StoreError as exc:
                _limited.log(
                    logging.WARNING,
                    "refresh",
                    "blocks not refreshed, keeping those in use: %s",
                    exc,
                )
