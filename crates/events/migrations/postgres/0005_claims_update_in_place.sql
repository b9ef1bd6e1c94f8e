-- A claim moving on (APPROVED -> PAID, say) should touch no indexed column,
-- so that PostgreSQL updates it in place (a HOT update: no new index entries).
-- The one-refusal index named status and processed_at in its predicate; a
-- column set once at insert tells condition refusals apart instead.
ALTER TABLE reward_claims ADD COLUMN refusal BOOLEAN NOT NULL DEFAULT false;
UPDATE reward_claims SET refusal = true WHERE status = 'REJECTED' AND slot IS NULL AND processed_at IS NULL;
DROP INDEX reward_claims_one_refusal;
CREATE UNIQUE INDEX reward_claims_one_refusal ON reward_claims (user_id, reward_id) WHERE refusal;
-- Room on each page for the updated version of each of its claims.
ALTER TABLE reward_claims SET (fillfactor = 50);
-- A delivered payout leaves the outbox (the claim's PAID transition says when).
DELETE FROM payouts WHERE delivered_at IS NOT NULL;
