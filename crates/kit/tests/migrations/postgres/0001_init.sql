-- When this store was created; kept across restarts (see /ready).
CREATE TABLE store_info (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    created_at TIMESTAMPTZ NOT NULL
);
