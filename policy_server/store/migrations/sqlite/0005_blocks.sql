-- Accounts' blocks of an origin, refused on `allow` until `until`: kind 'provider' (key the
-- provider as origins spell it, "AS64500" or "org:...", in `country`, '' when unknown) or
-- 'prefix' (key the network prefix, country ''). Made by the account's owner (from a notice)
-- or by an operator.
CREATE TABLE blocks (
    account   TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('provider', 'prefix')),
    key       TEXT NOT NULL,
    country   TEXT NOT NULL DEFAULT '',
    created   REAL NOT NULL,
    until     REAL NOT NULL,
    updated   REAL NOT NULL,
    notice_id TEXT,
    source    TEXT NOT NULL CHECK (source IN ('owner', 'operator')),
    PRIMARY KEY (account, kind, key, country)
) WITHOUT ROWID;
CREATE INDEX blocks_until ON blocks (until);

-- Bumped by every write to blocks, in its transaction: each node reads the blocks again only
-- when it changed.
CREATE TABLE block_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO block_version VALUES (1, 0);
