-- The activity ledger: facts about players that conditions are checked against.
CREATE TABLE activities (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    -- Canonical JSON (sorted keys): a replay is recognised by equal content.
    attributes  TEXT NOT NULL,
    -- The inviting user of a SIGNUP, for counting a user's invitations.
    referrer_id TEXT,
    received_at INTEGER NOT NULL
);
CREATE INDEX activities_by_user ON activities (user_id, type, occurred_at);
CREATE INDEX activities_by_referrer ON activities (referrer_id, type, occurred_at);
