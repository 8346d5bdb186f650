"""The one way a command uses the store: ``async with store_session(config) as store``.

Commands that only read open it with ``migrate=False``: an old or missing schema is then
reported ("run `policy-server migrate`") and left exactly as it was. Commands that write may
bring it up to date (``migrate=True``), as the service does when it starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from ..config import Config
from ..store import open_store
from ..store.base import SchemaBehind, Store, StoreError
from .cli import CommandError


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """A store failure as the command's failure: one line on stderr and exit status 1."""
    try:
        yield
    except SchemaBehind as exc:
        raise CommandError(str(exc)) from exc
    except StoreError as exc:
        raise CommandError(f"store unavailable: {exc}") from exc


@contextlib.asynccontextmanager
async def store_session(config: Config, *, migrate: bool = False) -> AsyncIterator[Store]:
    """The configured store, open for the ``async with`` body and closed after it, whatever
    happens in it; without ``migrate`` an out-of-date schema is an error, not upgraded."""
    with _one_line():
        store = await open_store(config.storage, migrate=migrate)
    try:
        with _one_line():
            yield store
    finally:
        with _one_line():
            await store.close()
