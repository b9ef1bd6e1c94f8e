-- A grant batch inserts claims only of rewards it holds locked (FOR UPDATE,
-- their events FOR SHARE), and neither rewards nor events are ever deleted:
-- the two foreign keys on reward_claims could never fire, yet each inserted
-- claim ran both of their checks (a trigger and a locking lookup apiece,
-- about a tenth of PostgreSQL's CPU per grant in bench/claims.sh).
ALTER TABLE reward_claims DROP CONSTRAINT IF EXISTS reward_claims_event_id_fkey;
ALTER TABLE reward_claims DROP CONSTRAINT IF EXISTS reward_claims_reward_id_fkey;
