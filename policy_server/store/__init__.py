"""Storage backends behind one interface; backends are imported only when used."""

from __future__ import annotations

from ..config import StorageConfig
from .base import Store, StoreError

__all__ = ["Store", "StoreError", "open_store"]


async def open_store(config: StorageConfig) -> Store:
    """Create and open the configured backend."""
    if config.backend == "sqlite":
        from .sqlite import SQLiteStore

        store: Store = SQLiteStore(config)
    elif config.backend == "postgres":
        from .postgres import PostgresStore

        store = PostgresStore(config)
    else:  # pragma: no cover - the config model admits only known backends
        raise StoreError(f"unknown storage backend {config.backend!r}")
    await store.open()
    return store
