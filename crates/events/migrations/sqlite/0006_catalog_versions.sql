-- A counter bumped by every change of an event or a reward: a claim checked
-- against a remembered version is refused by its grant's batch once the row
-- has moved on (timestamps cannot say that: the clock may stand still or step
-- back).
ALTER TABLE events ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rewards ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
