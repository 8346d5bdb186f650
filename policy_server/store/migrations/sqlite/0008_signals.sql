-- What sharper signals need from an origin: the mail programs seen from it (a JSON list of
-- names, the most recent last), where its last login was placed (a City database's latitude,
-- longitude and accuracy radius; NULL without one), and when the owner confirmed it ("It was
-- me"; NULL when not, or when a later answer denied it).
ALTER TABLE origins ADD COLUMN clients TEXT;
ALTER TABLE origins ADD COLUMN latitude REAL;
ALTER TABLE origins ADD COLUMN longitude REAL;
ALTER TABLE origins ADD COLUMN radius_km REAL;
ALTER TABLE origins ADD COLUMN confirmed REAL;
-- the confirmations given so far
UPDATE origins SET confirmed = (
    SELECT max(f.at) FROM feedback f WHERE f.account = origins.account
    AND f.prefix = origins.prefix AND f.country = origins.country
    AND f.provider = origins.provider AND f.answer = 'confirmed'
);
-- An account's own choices (``policy-server account``, the owner's page): its notices on or
-- off, a declared trip (a country, until when), and when a hijack pattern last alerted.
CREATE TABLE account_settings (
    account      TEXT PRIMARY KEY,
    notices      INTEGER NOT NULL DEFAULT 1,
    trip_country TEXT,
    trip_until   REAL,
    alerted_at   REAL,
    updated      REAL NOT NULL
) WITHOUT ROWID;
