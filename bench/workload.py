"""Generated inputs for the throughput benchmark: geo files, a history, Dovecot request bodies.

* Geo data: 4096 networks (11.0.0.0/8 cut into /20s), 16 countries, 256 ASNs per country.
* History: ``accounts`` accounts with 1 to 5 known origins each, written straight into the
  service's SQLite schema (one /24 of a network per origin), each origin last used within the
  past half hour, as for the accounts of a busy hour (mail programs poll every few minutes).
* Requests: logins as Dovecot sends them with the example config plus the allow checks
  (allow, allow, report), accounts drawn with a Zipf-like popularity (s = 1), 95% from a known
  origin, 4% from a new provider in the same country, 1% from a new country; 5% of the logins
  fail (wrong password: the report says so).
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import itertools
import json
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from geodata import Network, write_asn_mmdb, write_country_mmdb  # noqa: E402

COUNTRIES = ("JP", "US", "DE", "FR", "GB", "KR", "CN", "BR", "IN", "AU", "CA", "NL", "SE", "SG",
             "TW", "IT")  # fmt: skip
NETWORKS = 4096
BASE = ipaddress.IPv4Network("11.0.0.0/8")


def network(i: int) -> tuple[ipaddress.IPv4Network, str, int]:
    """The i-th fixture network: (its /20, country, ASN)."""
    net = ipaddress.IPv4Network((int(BASE.network_address) + (i % NETWORKS) * 4096, 20))
    return net, COUNTRIES[i % 16], 65000 + (i // 16) % 256


def write_geo(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(NETWORKS):
        net, country, asn = network(i)
        rows.append(Network(str(net), country, asn, f"Provider {asn}"))
    return {
        "country_mmdb": write_country_mmdb(directory / "country.mmdb", rows),
        "asn_mmdb": write_asn_mmdb(directory / "asn.mmdb", rows),
    }


def account_networks(i: int) -> list[int]:
    """The networks account ``i`` is known from: 1 to 5, mostly one country."""
    base = (i * 7919) % NETWORKS
    return [(base + 16 * k) % NETWORKS for k in range(1 + i % 5)]


def host(net: ipaddress.IPv4Network, rng: random.Random) -> str:
    # the first /24 of the /20: the prefix stored in the history
    return str(net.network_address + rng.randrange(1, 255))


def write_history(db: Path, accounts: int) -> int:
    """Create the service's schema in ``db`` and fill it; returns the number of origins."""
    from policy_server.config import StorageConfig
    from policy_server.store import open_store

    async def migrate() -> None:
        store = await open_store(StorageConfig(path=str(db)))
        await store.close()

    asyncio.run(migrate())
    now = time.time()
    origins = 0
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        for start in range(0, accounts, 50_000):
            account_rows, origin_rows = history_rows(start, min(start + 50_000, accounts), now)
            conn.executemany(
                "INSERT INTO accounts (account, first_seen, last_seen, logins, failures)"
                " VALUES (?, ?, ?, ?, ?)",
                account_rows,
            )
            conn.executemany(
                "INSERT INTO origins (account, prefix, country, provider, as_org, first_seen,"
                " last_seen, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                origin_rows,
            )
            origins += len(origin_rows)
        conn.commit()
    return origins


def history_rows(
    start: int, stop: int, now: float
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Account rows and origin rows for accounts ``start`` to ``stop``."""
    account_rows: list[tuple[object, ...]] = []
    origin_rows: list[tuple[object, ...]] = []
    for i in range(start, stop):
        name = f"user{i}@example.jp"
        first = now - 90 * 86400 + (i % 1000)
        account_rows.append((name, first, now - 3600, 10, 0))
        for j in account_networks(i):
            net, country, asn = network(j)
            # active accounts: each origin last used within the past half hour
            origin_rows.append((name, f"{net.network_address}/24", country, f"AS{asn}",
                                f"Provider {asn}", first, now - (i * 7) % 1800, 5))  # fmt: skip
    return account_rows, origin_rows


async def write_history_pg(dsn: str, schema: str, accounts: int) -> int:
    """The same history in a PostgreSQL schema (created by the service's migrations)."""
    import asyncpg

    from policy_server.config import StorageConfig
    from policy_server.store import open_store

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        store = await open_store(StorageConfig(backend="postgres", dsn=dsn, schema=schema))
        await store.close()
        now = time.time()
        origins = 0
        for start in range(0, accounts, 50_000):
            account_rows, origin_rows = history_rows(start, min(start + 50_000, accounts), now)
            await conn.copy_records_to_table(
                "accounts",
                records=account_rows,
                columns=["account", "first_seen", "last_seen", "logins", "failures"],
                schema_name=schema,
            )
            await conn.copy_records_to_table(
                "origins",
                records=origin_rows,
                columns=[
                    "account",
                    "prefix",
                    "country",
                    "provider",
                    "as_org",
                    "first_seen",
                    "last_seen",
                    "count",
                ],
                schema_name=schema,
            )
            origins += len(origin_rows)
        await conn.execute(f"ANALYZE {schema}.accounts; ANALYZE {schema}.origins")
        return origins
    finally:
        await conn.close()


async def drop_schema_pg(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Request:
    command: str
    body: str


def _body(login: str, remote: str, session: str, report: bool, success: bool) -> str:
    data: dict[str, object] = {
        "login": login,
        "remote": remote,
        "protocol": "imap",
        "session_id": session,
    }
    if report:
        data.update(success=success, policy_reject=False)
    data["tls"] = False
    return json.dumps(data, separators=(",", ":"))


def logins(accounts: int, seed: int = 7) -> Iterator[tuple[str, str, bool, str]]:
    """(login, remote, success, kind) forever, with the workload's mix."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1.0 / r for r in range(1, accounts + 1)))
    total = cumulative[-1]
    while True:
        rank = bisect.bisect_left(cumulative, rng.random() * total)
        # popularity ranks map to scattered account numbers
        i = (rank * 2654435761) % accounts
        known = account_networks(i)
        roll = rng.random()
        if roll < 0.95:
            kind, j = "known", rng.choice(known)
        elif roll < 0.99:
            kind, j = "new_provider", known[0] + 16 * rng.randrange(5, 200)
        else:
            kind, j = "new_country", known[0] + 1 + rng.randrange(0, 15) * 17
        net, _, _ = network(j)
        yield f"user{i}@example.jp", host(net, rng), rng.random() >= 0.05, kind


def requests(accounts: int, count: int, allow_only: bool = False) -> list[Request]:
    """``count`` requests: allow, allow, report per login (or only allows)."""
    out: list[Request] = []
    for n, (login, remote, success, _kind) in enumerate(logins(accounts)):
        session = f"s{n:08x}"
        allow = _body(login, remote, session, report=False, success=False)
        out.append(Request("allow", allow))
        out.append(Request("allow", allow))
        if not allow_only:
            out.append(Request("report", _body(login, remote, session, True, success)))
        if len(out) >= count:
            return out[:count]
    return out


def write_wrk_script(path: Path, reqs: list[Request]) -> None:
    """A wrk Lua script cycling through ``reqs`` (each thread from its own offset)."""
    data = path.with_suffix(".tsv")
    data.write_text("".join(f"{r.command}\t{r.body}\n" for r in reqs), encoding="utf-8")
    path.write_text(
        f"""
local items = {{}}
for line in io.lines("{data}") do
  local command, body = line:match("^(%a+)\\t(.*)$")
  items[#items + 1] = {{"/?command=" .. command, body}}
end
local n = 0
function setup(thread)
  n = n + 1
  thread:set("offset", n * 7919)
end
local i = 0
function request()
  i = i + 1
  local item = items[((offset or 0) + i) % #items + 1]
  return wrk.format("POST", item[1], {{["Content-Type"] = "application/json"}}, item[2])
end
""",
        encoding="utf-8",
    )
