-- An ADMIN disables an account (PUT /users/{username}/status): it cannot
-- sign in or refresh, and disabling bumps its token version, so every
-- gateway refuses its access tokens within a second.
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'DISABLED'));
