-- The owner's answer to a notice: 'confirmed' ("It was me") or 'denied' ("It wasn't me"), with
-- the notice's origin, so that a confirmed origin stays known as confirmed after the notice is
-- purged. One answer per notice; a denial may replace a confirmation, never the reverse.
CREATE TABLE feedback (
    notice_id TEXT PRIMARY KEY,
    account   TEXT NOT NULL,
    answer    TEXT NOT NULL CHECK (answer IN ('confirmed', 'denied')),
    at        REAL NOT NULL,
    prefix    TEXT NOT NULL,
    country   TEXT NOT NULL DEFAULT '',
    provider  TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX feedback_account ON feedback (account, at);
