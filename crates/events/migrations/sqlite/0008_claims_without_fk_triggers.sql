-- PostgreSQL drops reward_claims' two foreign keys here (see its 0008): a
-- grant batch inserts claims only of rewards it holds, and rewards and events
-- are never deleted, so they could never fire. SQLite's checks are in-process
-- index lookups, cheap enough to keep, and dropping a foreign key there means
-- rebuilding the table: they stay.
SELECT 1;
