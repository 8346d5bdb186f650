-- Accounts' blocks of an origin, refused on `allow` until `until`: kind 'provider' (key the
-- provider as origins spell it, "AS64500" or "org:...", in `country`, '' when unknown) or
-- 'prefix' (key the network prefix, country ''). Made by the account's owner (from a notice)
-- or by an operator.
CREATE TABLE blocks (
    account   text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('provider', 'prefix')),
    key       text NOT NULL,
    country   text NOT NULL DEFAULT '',
    created   double precision NOT NULL,
    until     double precision NOT NULL,
    updated   double precision NOT NULL,
    notice_id text,
    source    text NOT NULL CHECK (source IN ('owner', 'operator')),
    PRIMARY KEY (account, kind, key, country)
);
CREATE INDEX blocks_until ON blocks (until);

-- Bumped by every write to blocks, in its transaction: each node reads the blocks again only
-- when it changed.
CREATE TABLE block_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO block_version VALUES (1, 0);
