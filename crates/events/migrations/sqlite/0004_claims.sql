-- Reward claims, their transitions, idempotency keys, the payout outbox and
-- the built-in payout ledger.
CREATE TABLE reward_claims (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL REFERENCES events (id),
    reward_id    TEXT NOT NULL REFERENCES rewards (id),
    -- A live claim (PENDING, APPROVED, PAID, FAILED) holds one of the
    -- reward's per-user slots 1..perUserLimit; the unique index below makes
    -- "at most perUserLimit live claims" the database's rule.
    slot         INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'PAID', 'FAILED', 'CANCELLED')),
    reason       TEXT,
    -- The reward as it was when claimed: {name, type, details, quantity}.
    reward       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    processed_at INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX reward_claims_live_slot ON reward_claims (user_id, reward_id, slot) WHERE slot IS NOT NULL;
-- One condition-failure record per user and reward, refreshed on each retry.
CREATE UNIQUE INDEX reward_claims_one_refusal ON reward_claims (user_id, reward_id) WHERE status = 'REJECTED' AND slot IS NULL AND processed_at IS NULL;
CREATE INDEX reward_claims_newest ON reward_claims (created_at DESC, id DESC);
CREATE INDEX reward_claims_by_user ON reward_claims (user_id, created_at DESC, id DESC);

CREATE TABLE claim_transitions (
    id         TEXT PRIMARY KEY,
    claim_id   TEXT NOT NULL REFERENCES reward_claims (id),
    from_status TEXT,
    to_status  TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    reason     TEXT,
    at         INTEGER NOT NULL
);
CREATE INDEX claim_transitions_by_claim ON claim_transitions (claim_id, at);

CREATE TABLE idempotency_keys (
    user_id         TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INTEGER,
    response_body   TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE TABLE payouts (
    claim_id        TEXT PRIMARY KEY REFERENCES reward_claims (id),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX payouts_due ON payouts (next_attempt_at) WHERE delivered_at IS NULL;

-- The built-in payout sink: what each player was given.
CREATE TABLE ledger_entries (
    claim_id   TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    details    TEXT NOT NULL,
    quantity   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX ledger_entries_by_user ON ledger_entries (user_id, created_at);
