-- An ADMIN revokes a signing key (POST /keys/{kid}/revoke): it neither signs
-- nor is published again, and every gateway, told by GET /revocations,
-- refuses the tokens it signed at once.
ALTER TABLE signing_keys ADD COLUMN revoked_at BIGINT;
