-- The owner's answer to a notice: 'confirmed' ("It was me") or 'denied' ("It wasn't me"), with
-- the notice's origin, so that a confirmed origin stays known as confirmed after the notice is
-- purged. One answer per notice; a denial may replace a confirmation, never the reverse.
CREATE TABLE feedback (
    notice_id text PRIMARY KEY,
    account   text NOT NULL,
    answer    text NOT NULL CHECK (answer IN ('confirmed', 'denied')),
    at        double precision NOT NULL,
    prefix    text NOT NULL,
    country   text NOT NULL DEFAULT '',
    provider  text NOT NULL DEFAULT ''
);
CREATE INDEX feedback_account ON feedback (account, at);
