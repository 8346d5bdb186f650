"""Generated inputs for the throughput benchmark: geo files, a history, Dovecot request bodies.

* Geo data: 4096 networks (11.0.0.0/8 cut into /20s), 16 countries, 256 ASNs per country.
* History: ``accounts`` accounts with 1 to 5 known origins each, written straight into the
  service's SQLite schema (one /24 of a network per origin), each origin last used within the
  past half hour, as for the accounts of a busy hour (mail programs poll every few minutes).
  Each origin also holds the mail program its logins name (see ``device``), as a history
  that has seen those programs does, so a login from a known origin writes nothing.
* Requests: logins as Dovecot sends them with the attributes of dovecot-example.conf (login,
  remote, protocol, session_id, device_id, fail_type, then Dovecot's own success,
  policy_reject and tls), accounts drawn with a Zipf-like popularity (s = 1), 95% from a known
  origin, 4% from a new provider in the same country, 1% from a new country; 5% of the logins
  fail (wrong password: the report says so, with ``fail_type`` "credentials"). Three mixes
  (``requests``): "report", what the example config sends (one report per login); "full", the
  allow checks on too (allow, allow, report); "allow", the two allow checks alone.
* First logins (``first_logins``): accounts with no history at all, as on the service's first
  day, each a successful report from a network of the geo data.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import ipaddress
import itertools
import json
import random
import sqlite3
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from geodata import Network, write_asn_mmdb, write_country_mmdb  # noqa: E402

COUNTRIES = ("JP", "US", "DE", "FR", "GB", "KR", "CN", "BR", "IN", "AU", "CA", "NL", "SE", "SG",
             "TW", "IT")  # fmt: skip
NETWORKS = 4096
BASE = ipaddress.IPv4Network("11.0.0.0/8")
# IMAP IDs as mail programs send them and Dovecot passes them on (``device_id``); "" is a
# program that sends no ID
DEVICES = (
    '"name" "Thunderbird" "version" "128.3.0"',
    '"name" "iPhone Mail" "version" "21A329" "os" "iOS" "os-version" "17.0 (21A329)"',
    '"name" "K-9 Mail" "version" "6.802"',
    '"name" "Evolution" "version" "3.46.4"',
    "",
)
# what the service keeps of each (``policy_server.client.parse_client_id``): its name
PROGRAMS = ("Thunderbird", "iPhone Mail", "K-9 Mail", "Evolution", "")
MODES = ("report", "full", "allow")


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


def device(i: int, j: int) -> int:
    """The mail program (an index into ``DEVICES``) account ``i`` uses from network ``j``."""
    return (i + j) % len(DEVICES)


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
                " last_seen, count, clients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            program = PROGRAMS[device(i, j)]
            clients = json.dumps([program]) if program else None
            # active accounts: each origin last used within the past half hour
            origin_rows.append((name, f"{net.network_address}/24", country, f"AS{asn}",
                                f"Provider {asn}", first, now - (i * 7) % 1800, 5,
                                clients))  # fmt: skip
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
                    "clients",
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


def _body(login: str, remote: str, session: str, program: int, report: bool, success: bool) -> str:
    """A request body as Dovecot 2.4 writes it for the example config's attributes (its keys
    sorted, then the flags Dovecot appends itself; an allow check has no success flags)."""
    data: dict[str, object] = {
        "device_id": DEVICES[program],
        "fail_type": "" if success or not report else "credentials",
        "login": login,
        "protocol": "imap",
        "remote": remote,
        "session_id": session,
    }
    if report:
        data.update(success=success, policy_reject=False)
    data["tls"] = False
    return json.dumps(data, separators=(",", ":"))


def session_id(n: int) -> str:
    """A session id in the form of Dovecot's (16 base64 characters, as in its log lines)."""
    return base64.b64encode(n.to_bytes(12, "big")).decode()


@dataclass(frozen=True, slots=True)
class Login:
    """One login attempt of the workload: who, from where, with which mail program."""

    login: str
    remote: str
    success: bool
    kind: str  # "known", "new_provider" or "new_country"
    program: int  # an index into DEVICES


def logins(accounts: int, seed: int = 7) -> Iterator[Login]:
    """The workload's logins forever, with its mix."""
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
        remote = host(net, rng)
        yield Login(f"user{i}@example.jp", remote, rng.random() >= 0.05, kind, device(i, j))


def requests(
    accounts: int,
    count: int,
    allow_only: bool = False,
    mode: str = "full",
    kinds: Collection[str] | None = None,
) -> list[Request]:
    """``count`` requests of the logins of a history of ``accounts`` accounts, per login:
    ``mode`` "full": allow, allow, report; "allow": allow, allow (also ``allow_only``, the
    older spelling); "report": the report alone. ``kinds``: only logins of those kinds (e.g.
    ``{"known"}``, the traffic that changes nothing)."""
    if allow_only:
        mode = "allow"
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    out: list[Request] = []
    for n, one in enumerate(logins(accounts)):
        if kinds is not None and one.kind not in kinds:
            continue
        session = session_id(n)
        if mode != "report":
            allow = _body(one.login, one.remote, session, one.program, False, False)
            out += (Request("allow", allow), Request("allow", allow))
        if mode != "allow":
            out.append(
                Request(
                    "report",
                    _body(one.login, one.remote, session, one.program, True, one.success),
                )
            )
        if len(out) >= count:
            return out[:count]
    return out


def first_logins(count: int, seed: int = 13) -> list[Request]:
    """``count`` successful first logins: reports of ``new{i}@example.jp``, accounts no history
    holds, each from a host of a network of the geo data."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        j = rng.randrange(NETWORKS)
        net, _, _ = network(j)
        body = _body(
            f"new{i}@example.jp", host(net, rng), session_id(1 << 40 | i), device(i, j), True, True
        )
        out.append(Request("report", body))
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
