-- Who receives an account's notices, in which language and time zone.
CREATE TABLE contacts (
    account  TEXT PRIMARY KEY,
    email    TEXT,
    phone    TEXT,
    language TEXT,
    timezone TEXT,
    updated  REAL NOT NULL
) WITHOUT ROWID;

-- The origin a notice is about, so later logins from it within the coalescing window join it.
ALTER TABLE notices ADD COLUMN origin_key TEXT NOT NULL DEFAULT '';
CREATE INDEX notices_origin ON notices (account, origin_key, created);

-- Deliveries gain the account (for per-account throttling), two final states and the notice a
-- throttled one was folded into. SQLite cannot change a CHECK constraint in place.
CREATE TABLE deliveries_v2 (
    notice_id    TEXT NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    channel      TEXT NOT NULL,
    account      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN
                     ('queued', 'sending', 'sent', 'dead', 'undeliverable', 'folded')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    deadline     REAL NOT NULL,
    last_error   TEXT,
    claimed_by   TEXT,
    lease_until  REAL,
    folded_into  TEXT,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    PRIMARY KEY (notice_id, channel)
) WITHOUT ROWID;
INSERT INTO deliveries_v2 (notice_id, channel, account, status, attempts, next_attempt, deadline,
                           last_error, claimed_by, lease_until, created, updated)
    SELECT d.notice_id, d.channel, n.account, d.status, d.attempts, d.next_attempt, d.deadline,
           d.last_error, d.claimed_by, d.lease_until, d.created, d.updated
    FROM deliveries d JOIN notices n ON n.id = d.notice_id;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (status, next_attempt);
CREATE INDEX deliveries_lease ON deliveries (status, lease_until);
CREATE INDEX deliveries_account ON deliveries (account, channel, status, updated);
