-- Lean grants (see src/commit): an automatic grant paid by the built-in
-- ledger is one claim row written PAID; its creation (requested, approved,
-- paid at one instant) is read from the claim's own timestamps, so
-- transition rows record only what happens later or by hand.
--
-- Every index on reward_claims answers a query the API makes:
-- - the primary key: GET /reward-claims/{id} and its steps (approve, reject,
--   retry, transitions); idempotency keys finding their claim;
-- - reward_claims_live_slot: the per-user limit (a grant batch reads the live
--   slots of its players; no two live claims share a slot);
-- - reward_claims_one_refusal: a claim refused for its condition keeps one
--   REJECTED record per player and reward, refreshed;
-- - reward_claims_newest: GET /reward-claims, newest first, with its filters;
-- - reward_claims_by_user: GET /reward-claims/me and ?userId=.

-- An idempotency key names the claim its first request chose, so that a
-- repeat whose first request died learns the outcome by looking for it.
ALTER TABLE idempotency_keys ADD COLUMN claim_id TEXT;

-- Creation steps are read from the claims themselves now.
DELETE FROM claim_transitions WHERE from_status IS NULL;

-- The built-in ledger is the set of PAID claims.
DROP TABLE ledger_entries;
