-- Deliveries gain three states: held (by the fleet-wide breaker or the geo-data guard, until an
-- operator releases or discards them), discarded (by an operator, who and when in last_error)
-- and shadow (rendered in dry-run mode, never sent). SQLite cannot change a CHECK in place.
CREATE TABLE deliveries_v3 (
    notice_id    TEXT NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    channel      TEXT NOT NULL,
    account      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN
                     ('queued', 'sending', 'sent', 'dead', 'undeliverable', 'folded',
                      'held', 'discarded', 'shadow')),
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
INSERT INTO deliveries_v3 SELECT notice_id, channel, account, status, attempts, next_attempt,
    deadline, last_error, claimed_by, lease_until, folded_into, created, updated FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v3 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (status, next_attempt);
CREATE INDEX deliveries_lease ON deliveries (status, lease_until);
CREATE INDEX deliveries_account ON deliveries (account, channel, status, updated);

-- Switches every process sharing the store obeys: the pause of owner notices, the state of
-- the fleet-wide breaker, the fingerprints of the geo files the guard last accepted.
CREATE TABLE controls (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
