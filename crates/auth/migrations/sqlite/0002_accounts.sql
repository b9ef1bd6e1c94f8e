-- Accounts, sessions, signing keys and the audit trail of role changes.
-- Instants are integer microseconds since the Unix epoch (same on PostgreSQL).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    -- Lower-cased username: the store, not a check-then-insert, keeps
    -- usernames unique case-insensitively.
    username_key  TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    -- Sorted, comma-separated: "ADMIN,USER".
    roles         TEXT NOT NULL,
    referrer_id   TEXT REFERENCES users (id),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX users_newest ON users (created_at DESC, id DESC);

CREATE TABLE token_families (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id),
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX token_families_user ON token_families (user_id);

CREATE TABLE refresh_tokens (
    -- SHA-256 of the opaque token; the token itself is never stored.
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES token_families (id),
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at   INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    -- Ed25519 seed (32 bytes) and public key (32 bytes).
    secret_key  BLOB NOT NULL,
    public_key  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    -- Published from creation; signs from this instant on.
    active_from INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    actor_id   TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    action     TEXT NOT NULL,
    -- JSON documents of the entity before and after the change.
    before     TEXT,
    after      TEXT
);
CREATE INDEX audit_log_newest ON audit_log (created_at DESC, id DESC);
