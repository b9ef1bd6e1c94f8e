-- Lean grants (see src/commit): an automatic grant paid by the built-in
-- ledger is one claim row written PAID; its creation (requested, approved,
-- paid at one instant) is read from the claim's own timestamps, so
-- transition rows record only what happens later or by hand.

-- An idempotency key names the claim its first request chose, so that a
-- repeat whose first request died learns the outcome by looking for it.
ALTER TABLE idempotency_keys ADD COLUMN claim_id TEXT;

-- Creation steps are read from the claims themselves now.
DELETE FROM claim_transitions WHERE from_status IS NULL;

-- The built-in ledger is the set of PAID claims: a row per claim here said
-- the same thing again.
DROP TABLE ledger_entries;

-- Every index on reward_claims answers a query the API makes:
COMMENT ON INDEX reward_claims_pkey IS
    'GET /reward-claims/{id} and its steps (approve, reject, retry, transitions); idempotency keys finding their claim';
COMMENT ON INDEX reward_claims_live_slot IS
    'the per-user limit: a grant batch reads the live slots of its players, and no two live claims share a slot';
COMMENT ON INDEX reward_claims_one_refusal IS
    'POST /reward-claims refused for its condition: one REJECTED record per player and reward, refreshed';
COMMENT ON INDEX reward_claims_newest IS
    'GET /reward-claims: every claim, newest first (keyset pages), with the optional filters';
COMMENT ON INDEX reward_claims_by_user IS
    'GET /reward-claims/me and GET /reward-claims?userId=: one player''s claims, newest first';
