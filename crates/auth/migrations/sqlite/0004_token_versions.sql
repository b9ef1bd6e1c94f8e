-- Revocation that does not wait for tokens to expire: every access token
-- carries its user's token version (claim `tv`); a role change (and, later,
-- a disabled account, a new password, signing out everywhere) bumps it and
-- stamps when, and every gateway, following GET /revocations, refuses the
-- user's tokens of an older version within a second.
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN tokens_revoked_at INTEGER;
CREATE INDEX users_tokens_revoked ON users (tokens_revoked_at) WHERE tokens_revoked_at IS NOT NULL;
