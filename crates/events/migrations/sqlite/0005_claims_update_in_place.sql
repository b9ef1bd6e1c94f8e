-- Condition refusals are told apart by a column set once at insert (the
-- PostgreSQL schema needs that for in-place updates; both stay alike).
ALTER TABLE reward_claims ADD COLUMN refusal INTEGER NOT NULL DEFAULT 0;
UPDATE reward_claims SET refusal = 1 WHERE status = 'REJECTED' AND slot IS NULL AND processed_at IS NULL;
DROP INDEX reward_claims_one_refusal;
CREATE UNIQUE INDEX reward_claims_one_refusal ON reward_claims (user_id, reward_id) WHERE refusal;
-- A delivered payout leaves the outbox (the claim's PAID transition says when).
DELETE FROM payouts WHERE delivered_at IS NOT NULL;
