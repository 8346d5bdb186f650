"""The one way a command uses the store: ``async with store_session(config) as store``.

Commands that only read open it with ``migrate=False``: an old or missing schema is then
reported ("run `policy-server migrate`") and left exactly as it was. Commands that write may
bring it up to date (``migrate=True``), as the service does when it starts.

Every session first says on stderr which store it opens (``store: sqlite /abs/path``), so that
an operator never mistakes another store for the one the service uses; stdout stays the
command's own (JSON for ``history export``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from ..config import Config, StorageConfig
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


def store_label(storage: StorageConfig) -> str:
    """Which store ``storage`` names, for people: ``sqlite /abs/path`` or
    ``postgres user@host:port/db schema S`` (never a password)."""
    if storage.backend == "sqlite":
        return f"sqlite {os.path.abspath(storage.path)}"
    return f"postgres {_postgres_place(storage.dsn)} schema {storage.schema}"


def _postgres_place(dsn: str) -> str:
    """``user@host:port/db`` of a connection URI, from what it says (libpq's defaults fill in
    what it leaves out); the password, wherever it is written, is left out."""
    try:
        parts = urlsplit(dsn.strip())
        query = parse_qs(parts.query)
    except ValueError:
        return "(unreadable dsn)"
    if parts.scheme not in ("postgresql", "postgres"):
        # nothing of it is shown: key=value text may hold password=...
        return "(dsn is not a postgresql:// URI)"
    # the netloc may list several hosts (h1:5432,h2:5432); only the user info is dropped
    user_info, _, hosts = parts.netloc.rpartition("@")
    user = unquote(user_info.partition(":")[0]) or query.get("user", [""])[0]
    hosts = unquote(hosts) or query.get("host", ["(default host)"])[0]
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
    return f"{user + '@' if user else ''}{hosts}/{database or '(default database)'}"


@contextlib.asynccontextmanager
async def store_session(config: Config, *, migrate: bool = False) -> AsyncIterator[Store]:
    """The configured store, open for the ``async with`` body and closed after it, whatever
    happens in it; without ``migrate`` an out-of-date schema is an error, not upgraded."""
    print(f"store: {store_label(config.storage)}", file=sys.stderr, flush=True)
    with _one_line():
        store = await open_store(config.storage, migrate=migrate)
    try:
        with _one_line():
            yield store
    finally:
        with _one_line():
            await store.close()
