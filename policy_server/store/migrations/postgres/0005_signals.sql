-- What sharper signals need from an origin: the mail programs seen from it (a JSON list of
-- names, the most recent last), where its last login was placed (a City database's latitude,
-- longitude and accuracy radius; NULL without one), and when the owner confirmed it ("It was
-- me"; NULL when not, or when a later answer denied it).
ALTER TABLE origins ADD COLUMN clients text;
ALTER TABLE origins ADD COLUMN latitude double precision;
ALTER TABLE origins ADD COLUMN longitude double precision;
ALTER TABLE origins ADD COLUMN radius_km double precision;
ALTER TABLE origins ADD COLUMN confirmed double precision;
-- the confirmations given so far
UPDATE origins SET confirmed = (
    SELECT max(f.at) FROM feedback f WHERE f.account = origins.account
    AND f.prefix = origins.prefix AND f.country = origins.country
    AND f.provider = origins.provider AND f.answer = 'confirmed'
);
-- An account's own choices (``policy-server account``, the owner's page): its notices on or
-- off, a declared trip (a country, until when), and when a hijack pattern last alerted.
CREATE TABLE account_settings (
    account      text PRIMARY KEY,
    notices      boolean NOT NULL DEFAULT true,
    trip_country text,
    trip_until   double precision,
    alerted_at   double precision,
    updated      double precision NOT NULL
);
