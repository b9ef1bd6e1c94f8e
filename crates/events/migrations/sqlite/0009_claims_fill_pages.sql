-- PostgreSQL fills reward_claims' pages fuller here (see its 0009); SQLite has
-- no fill factor.
SELECT 1;
