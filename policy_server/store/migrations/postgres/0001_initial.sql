-- The PostgreSQL schema, equivalent to the SQLite one after its migration 0004. Times are unix
-- seconds (double precision) as in SQLite. Every table holding per-account data has the account
-- in its primary key, so that the tables can be distributed by a hash of the account.

-- Accounts and their known origins. Unknown country or provider is stored as '' so that the
-- primary key identifies an origin exactly.
CREATE TABLE accounts (
    account      text PRIMARY KEY,
    first_seen   double precision NOT NULL,
    last_seen    double precision NOT NULL,
    logins       bigint NOT NULL DEFAULT 0,
    failures     bigint NOT NULL DEFAULT 0,
    last_failure double precision
);

CREATE TABLE origins (
    account    text NOT NULL,
    prefix     text NOT NULL,
    country    text NOT NULL,
    provider   text NOT NULL,
    as_org     text,
    first_seen double precision NOT NULL,
    last_seen  double precision NOT NULL,
    count      bigint NOT NULL,
    PRIMARY KEY (account, prefix, country, provider)
);

-- One row per unusual login: what happened, why, and the history the decision saw.
CREATE TABLE notices (
    id         text NOT NULL,
    account    text NOT NULL,
    created    double precision NOT NULL,
    reasons    jsonb NOT NULL,
    payload    jsonb NOT NULL,
    -- the origin the notice is about, so later logins from it within the coalescing window
    -- join it
    origin_key text NOT NULL DEFAULT '',
    PRIMARY KEY (account, id)
);
CREATE INDEX notices_id ON notices (id);
CREATE INDEX notices_account ON notices (account, created);
CREATE INDEX notices_origin ON notices (account, origin_key, created);
CREATE INDEX notices_created ON notices (created);

-- The queue: one row per notice and channel, with its retry state in the row.
CREATE TABLE deliveries (
    account      text NOT NULL,
    notice_id    text NOT NULL,
    channel      text NOT NULL,
    status       text NOT NULL CHECK (status IN
                     ('queued', 'sending', 'sent', 'dead', 'undeliverable', 'folded',
                      'held', 'discarded', 'shadow')),
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL,
    deadline     double precision NOT NULL,
    last_error   text,
    claimed_by   text,
    lease_until  double precision,
    folded_into  text,
    created      double precision NOT NULL,
    updated      double precision NOT NULL,
    PRIMARY KEY (account, notice_id, channel),
    FOREIGN KEY (account, notice_id) REFERENCES notices (account, id) ON DELETE CASCADE
);
CREATE INDEX deliveries_notice ON deliveries (notice_id, channel);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt);
CREATE INDEX deliveries_lease ON deliveries (status, lease_until);
CREATE INDEX deliveries_account ON deliveries (account, channel, status, updated);

-- Who receives an account's notices, in which language and time zone.
CREATE TABLE contacts (
    account  text PRIMARY KEY,
    email    text,
    phone    text,
    language text,
    timezone text,
    updated  double precision NOT NULL
);

-- Every unusual login the policy saw, notified or not, and why. Only the network prefix is
-- kept, never the full client address.
CREATE TABLE decisions (
    account   text NOT NULL,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    at        double precision NOT NULL,
    protocol  text NOT NULL,
    prefix    text NOT NULL,
    country   text,
    provider  text,
    network   text,
    reasons   jsonb NOT NULL,
    notified  boolean NOT NULL,
    note      text NOT NULL DEFAULT '',
    notice_id text,
    PRIMARY KEY (account, id)
);
CREATE INDEX decisions_account ON decisions (account, at);

-- Switches every process sharing the store obeys: the pause of owner notices, the state of
-- the fleet-wide breaker, the fingerprints of the geo files the guard last accepted.
CREATE TABLE controls (
    name    text PRIMARY KEY,
    value   jsonb NOT NULL,
    updated double precision NOT NULL
);
