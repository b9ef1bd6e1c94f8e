-- Events, their rewards, and the audit trail of operators' changes.
-- Instants are integer microseconds since the Unix epoch (same on SQLite).

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    -- The condition tree as validated JSON.
    condition   TEXT NOT NULL,
    -- The window, inclusive at both ends.
    start_at    BIGINT NOT NULL,
    end_at      BIGINT NOT NULL CHECK (end_at >= start_at),
    time_zone   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'ENDED')),
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX events_newest ON events (created_at DESC, id DESC);
CREATE INDEX events_window ON events (status, start_at, end_at);

CREATE TABLE rewards (
    id                TEXT PRIMARY KEY,
    event_id          TEXT NOT NULL REFERENCES events (id),
    name              TEXT NOT NULL,
    type              TEXT NOT NULL CHECK (type IN ('POINT', 'ITEM', 'COUPON', 'CURRENCY')),
    details           TEXT NOT NULL,
    quantity          BIGINT NOT NULL CHECK (quantity >= 1),
    -- NULL: unlimited. Otherwise grants in total, and how many are left.
    stock             BIGINT CHECK (stock >= 0),
    remaining         BIGINT CHECK (remaining >= 0 AND remaining <= stock),
    per_user_limit    BIGINT NOT NULL CHECK (per_user_limit >= 1),
    requires_approval BOOLEAN NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    CHECK ((stock IS NULL) = (remaining IS NULL))
);
CREATE INDEX rewards_newest ON rewards (created_at DESC, id DESC);
CREATE INDEX rewards_by_event ON rewards (event_id, created_at DESC, id DESC);

CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    actor_id   TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    before     TEXT,
    after      TEXT
);
CREATE INDEX audit_log_newest ON audit_log (created_at DESC, id DESC);
