-- Every unusual login the policy saw, notified or not, and why: what `history show` explains.
-- Only the network prefix is kept, never the full client address.
CREATE TABLE decisions (
    account   TEXT NOT NULL,
    at        REAL NOT NULL,
    protocol  TEXT NOT NULL,
    prefix    TEXT NOT NULL,
    country   TEXT,
    provider  TEXT,
    network   TEXT,
    reasons   TEXT NOT NULL,
    notified  INTEGER NOT NULL,
    note      TEXT NOT NULL DEFAULT '',
    notice_id TEXT
);
CREATE INDEX decisions_account ON decisions (account, at);
CREATE INDEX notices_created ON notices (created);
