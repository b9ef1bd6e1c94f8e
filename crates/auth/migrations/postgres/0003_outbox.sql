-- The transactional outbox: LOGIN and SIGNUP activities for the events
-- service, written in the same transaction as the session or the new user,
-- delivered (and retried) by a dispatcher, idempotent by id.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    type            TEXT NOT NULL,
    occurred_at     BIGINT NOT NULL,
    attributes      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
