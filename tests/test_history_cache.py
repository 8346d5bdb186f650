"""The histories a recorder keeps to answer fresh repeat logins without the store.

Each test shows the cache at work (a login answered from it, even once the store changed behind
its back) and then what empties it: a write of the account, a forget through the same store, a
forget by another process (seen through the block version every process reads), and the bound.
"""

from __future__ import annotations

import contextlib
import gc
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from stores import Backend

from policy_server.config import Config
from policy_server.model import (
    AccountSettings,
    AddressClass,
    Command,
    History,
    KnownOrigin,
    Location,
    LoginEvent,
    Origin,
    Reason,
)
from policy_server.origin.resolver import OriginResolver
from policy_server.service.blocks import BlockSet
from policy_server.service.history_cache import HistoryCache
from policy_server.service.recorder import LoginRecorder
from policy_server.store import open_store
from policy_server.store.base import Outcome, Store

AT = 1_764_000_000.0
HOME = "203.0.113.7"  # JP, Example Carrier JP
ELSEWHERE = "198.51.100.9"  # US, Example Hosting US


def login(remote: str, user: str = "mika") -> LoginEvent:
    return LoginEvent(Command.REPORT, user, remote, "imap", success=True)


@pytest.fixture
def resolver(make_config: Callable[..., Config]) -> AsyncIterator[OriginResolver]:
    resolver = OriginResolver.from_config(make_config().geoip)
    yield resolver
    resolver.close()


def test_bounded_oldest_first_and_void_when_the_version_moves() -> None:
    version = [0]
    cache = HistoryCache(2, lambda: version[0])
    for name in ("a", "b", "c"):
        cache.put(name, History(name), cache.version())
    assert len(cache) == 2
    assert cache.get("a") is None  # the oldest went first
    assert cache.get("c") == History("c")
    read_at = cache.version()
    version[0] += 1
    # a history read before the change is not kept, and what was kept is gone
    cache.put("d", History("d"), read_at)
    assert cache.get("c") is None
    assert cache.get("d") is None
    assert len(cache) == 0
    cache.put("d", History("d"), cache.version())
    assert cache.get("d") == History("d")
    # size 0: nothing is kept
    off = HistoryCache(0, lambda: 0)
    off.put("a", History("a"), off.version())
    assert off.get("a") is None


def test_a_kept_history_comes_back_whole_and_costs_the_collector_nothing() -> None:
    home = KnownOrigin(
        prefix="203.0.113.0/24",
        country="JP",
        provider="AS64500",
        as_org="Example Carrier JP",
        first_seen=AT - 86400,
        last_seen=AT - 60,
        count=42,
        network="office",
        clients=("Thunderbird", "K-9 Mail"),
        location=Location(35.68, 139.69, 20.0),
        confirmed=AT - 3600,
    )
    away = KnownOrigin("198.51.100.0/24", None, None, None, AT - 7200, AT - 7000, 1)
    settings = AccountSettings(notices=False, trip_country="FR", trip_until=AT + 86400)
    history = History("mika", (home, away), settings)
    cache = HistoryCache(10, lambda: 0)
    cache.put("mika", history, cache.version())
    # every field of every origin, and the settings, as they were put
    assert cache.get("mika") == history
    at_home = Origin("203.0.113.7", AddressClass.GLOBAL, "203.0.113.0/24", "JP", 64500, "x")
    assert cache.lookup("mika", at_home) == (True, home)
    # another provider in the same prefix is another origin
    other = Origin("203.0.113.7", AddressClass.GLOBAL, "203.0.113.0/24", "JP", 64501, "y")
    assert cache.lookup("mika", other) == (True, None)
    assert cache.lookup("nobody", at_home) == (False, None)
    # once the collector looked at it, it tracks no object of the entry any more (it stops
    # tracking a tuple of untracked values when it looks at it: one level of nesting a pass)
    for _ in range(4):
        gc.collect()
    assert not any(gc.is_tracked(obj) for obj in _walk(cache._entries["mika"]))


def _walk(value: object) -> list[object]:
    found = [value]
    if isinstance(value, tuple):
        for item in value:
            found += _walk(item)
    return found


async def test_fresh_repeats_are_answered_from_memory_until_the_account_writes(
    backend: Backend, make_config: Callable[..., Config], resolver: OriginResolver
) -> None:
    config = make_config()
    store = await backend.open()
    try:
        recorder = LoginRecorder(config, store, lambda: resolver, ("log",))
        first = await recorder.report(login(HOME), at=AT)
        assert Reason.FIRST_USE in first.decision.reasons
        # the first login wrote: nothing kept; the next one reads the store and keeps it
        assert recorder.histories.get("mika") is None
        again = await recorder.report(login(HOME), at=AT + 900)
        assert again.decision.reasons == () and not again.wrote
        kept = recorder.histories.get("mika")
        assert kept is not None and len(kept.origins) == 1
        await _delete_origins_behind_the_stores_back(backend, store, "mika")
        # answered from memory: the store, emptied behind its back, is not asked
        third = recorder.begin(login(HOME), AT + 1000)
        assert isinstance(third, Outcome) and third.decision.reasons == ()
        # a login that writes drops the account; the store then says what it holds (nothing)
        elsewhere = await recorder.report(login(ELSEWHERE), at=AT + 1100)
        assert recorder.histories.get("mika") is None
        assert Reason.FIRST_USE in elsewhere.decision.reasons
    finally:
        await store.close()


async def _delete_origins_behind_the_stores_back(
    backend: Backend, store: Store, account: str
) -> None:
    if backend.name == "sqlite":
        # closing() closes it; the connection's own with block only commits
        with contextlib.closing(sqlite3.connect(backend.config.path)) as conn, conn:
            conn.execute("DELETE FROM origins WHERE account = ?", (account,))
        return
    import asyncpg

    conn = await asyncpg.connect(
        backend.config.dsn, server_settings={"search_path": backend.config.schema}
    )
    try:
        await conn.execute("DELETE FROM origins WHERE account = $1", account)
    finally:
        await conn.close()


async def keep_mika(recorder: LoginRecorder) -> None:
    """A first login (it writes), then a repeat, which reads the history and keeps it."""
    await recorder.report(login(HOME), at=AT)
    await recorder.report(login(HOME), at=AT + 900)
    assert recorder.histories.get("mika") is not None


async def test_a_forget_through_the_store_empties_the_cache(
    backend: Backend, make_config: Callable[..., Config], resolver: OriginResolver
) -> None:
    config = make_config()
    store = await backend.open()
    try:
        recorder = LoginRecorder(config, store, lambda: resolver, ("log",))
        await keep_mika(recorder)
        await store.forget("mika")
        # the next login is the account's first again, at once
        outcome = await recorder.report(login(HOME), at=AT + 1000)
        assert Reason.FIRST_USE in outcome.decision.reasons
    finally:
        await store.close()


async def test_a_forget_by_another_process_empties_the_cache_once_blocks_are_read(
    backend: Backend, make_config: Callable[..., Config], resolver: OriginResolver
) -> None:
    config = make_config()
    store = await backend.open()
    other = await backend.open()  # as `policy-server history forget` opens it
    try:
        blocks = BlockSet(store)
        await blocks.refresh()
        recorder = LoginRecorder(
            config,
            store,
            lambda: resolver,
            ("log",),
            history_version=lambda: (store.forgotten, blocks.version),
        )
        await keep_mika(recorder)
        await other.forget("mika")
        # until the set reads the block version (once a second), the kept history stands
        assert recorder.histories.get("mika") is not None
        await blocks.refresh()
        assert recorder.histories.get("mika") is None
        outcome = await recorder.report(login(HOME), at=AT + 1000)
        assert Reason.FIRST_USE in outcome.decision.reasons
    finally:
        await other.close()
        await store.close()


async def test_off_reads_the_store_every_time(
    make_config: Callable[..., Config], resolver: OriginResolver, tmp_path: Path
) -> None:
    config = make_config(storage={"path": str(tmp_path / "off.sqlite3"), "history_cache": 0})
    assert config.storage.history_cache == 0
    store = await open_store(config.storage)
    try:
        recorder = LoginRecorder(config, store, lambda: resolver, ("log",))
        await recorder.report(login(HOME), at=AT)
        await recorder.report(login(HOME), at=AT + 900)
        assert len(recorder.histories) == 0
        with contextlib.closing(sqlite3.connect(tmp_path / "off.sqlite3")) as conn, conn:
            conn.execute("DELETE FROM origins")
        outcome = await recorder.report(login(HOME), at=AT + 1000)
        assert Reason.FIRST_USE in outcome.decision.reasons
    finally:
        await store.close()
