"""Storage backends behind one interface; backends are imported only when used."""

from __future__ import annotations

from ..config import StorageConfig
from .base import SchemaBehind, Store, StoreError

__all__ = ["SchemaBehind", "Store", "StoreError", "open_store"]


async def open_store(config: StorageConfig, migrate: bool = True) -> Store:
    """Create and open the configured backend; ``migrate=False`` opens it only if its schema is
    up to date (``SchemaBehind`` otherwise), creating and changing nothing."""
    if config.backend == "sqlite":
        from .sqlite import SQLiteStore

        store: Store = SQLiteStore(config)
    elif config.backend == "postgres":
        from .postgres import PostgresStore

        store = PostgresStore(config)
    else:  # pragma: no cover - the config model admits only known backends
        raise StoreError(f"unknown storage backend {config.backend!r}")
    await store.open(migrate=migrate)
    return store
