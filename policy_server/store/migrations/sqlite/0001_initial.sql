-- Accounts and their known origins. Unknown country or provider is stored as '' so that the
-- primary key (where NULLs would all be distinct) identifies an origin exactly.
CREATE TABLE accounts (
    account      TEXT PRIMARY KEY,
    first_seen   REAL NOT NULL,
    last_seen    REAL NOT NULL,
    logins       INTEGER NOT NULL DEFAULT 0,
    failures     INTEGER NOT NULL DEFAULT 0,
    last_failure REAL
) WITHOUT ROWID;

CREATE TABLE origins (
    account    TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    country    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    as_org     TEXT,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (account, prefix, country, provider)
) WITHOUT ROWID;

-- One row per unusual login: what happened, why, and the history the decision saw.
CREATE TABLE notices (
    id      TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    created REAL NOT NULL,
    reasons TEXT NOT NULL,
    payload TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX notices_account ON notices (account, created);

-- The queue: one row per notice and channel, with its retry state in the row.
CREATE TABLE deliveries (
    notice_id    TEXT NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    channel      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    deadline     REAL NOT NULL,
    last_error   TEXT,
    claimed_by   TEXT,
    lease_until  REAL,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    PRIMARY KEY (notice_id, channel)
) WITHOUT ROWID;
CREATE INDEX deliveries_due ON deliveries (status, next_attempt);
CREATE INDEX deliveries_lease ON deliveries (status, lease_until);
