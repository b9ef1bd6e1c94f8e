-- The activity ledger: facts about players that conditions are checked against.
CREATE TABLE activities (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    type        TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    -- Canonical JSON (sorted keys): a replay is recognised by equal content.
    attributes  TEXT NOT NULL,
    -- What the activity is about, indexed for conditions: the inviting user
    -- of a SIGNUP, the quest of a QUEST_CLEAR.
    subject     TEXT,
    -- How much: the level of a LEVEL_UP.
    amount      INTEGER,
    received_at INTEGER NOT NULL
);
CREATE INDEX activities_by_user ON activities (user_id, type, occurred_at, amount);
CREATE INDEX activities_by_subject ON activities (subject, type, user_id, occurred_at);
