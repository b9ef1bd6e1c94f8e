//! A grant batch on PostgreSQL: what it locks and reads, and how it writes
//! what [`crate::rule::decide`] decided — in one transaction: begin, lock the
//! rewards, read the players' live slots (and lock the batch's idempotency
//! keys, when it has any), write, commit.
//!
//! The slots are read by a statement of their own, after the rewards' locks
//! are held: a statement sees what was committed when it started, so reading
//! them in the locking statement would miss the claims of a batch (of another
//! instance) that it waited for. Lists travel as arrays or one JSON document
//! per kind of row, so a statement's text is the same whatever the batch's
//! size (prepared once per connection), and ids are matched by index probes.

use sqlx::{PgConnection, Postgres, Transaction};

use super::{Needs, Writes};
use crate::batch::json;
use crate::rule::{HeldSlot, KeyState, RewardState, Snapshot};

const LOCK_REWARDS: &str = "SELECT r.id, r.event_id, r.remaining, r.per_user_limit, \
                            r.version AS reward_version, e.version AS event_version \
                            FROM rewards r JOIN events e ON e.id = r.event_id \
                            WHERE r.id = ANY($1) ORDER BY r.id FOR UPDATE OF r FOR SHARE OF e";
/// One index lookup per (player, reward), whatever the table's statistics
/// say: a lateral subquery that cannot be flattened (`OFFSET 0`) leaves the
/// planner no join to turn into a scan of every claim. (A plain join did
/// that: its generic plan, made while `reward_claims` was nearly empty, was
/// a hash join over a sequential scan, kept until the first analyze — in one
/// bench run, 36 million rows read in 1,198 scans.)
const HELD_SLOTS: &str = "SELECT p.user_id, p.reward_id, c.slot \
                          FROM unnest($1::text[], $2::text[]) AS p(user_id, reward_id) \
                          CROSS JOIN LATERAL (SELECT slot FROM reward_claims c WHERE c.user_id = p.user_id \
                          AND c.reward_id = p.reward_id AND c.slot IS NOT NULL OFFSET 0) c";
/// The same shape, for the same reason. The pairs come sorted, and the
/// nested loop locks the keys in the order it meets them: in key order.
const LOCK_KEYS: &str = "SELECT k.user_id, k.key, k.claim_id, k.answered \
                         FROM unnest($1::text[], $2::text[]) AS p(user_id, key) \
                         CROSS JOIN LATERAL (SELECT user_id, key, claim_id, response_status IS NOT NULL AS answered \
                         FROM idempotency_keys k WHERE k.user_id = p.user_id AND k.key = p.key \
                         ORDER BY user_id, key FOR UPDATE OFFSET 0) k \
                         ORDER BY k.user_id, k.key";

/// Every kind of row in one statement (data-modifying CTEs all run, whether
/// or not the final SELECT reads them). The `remaining >= 0` check refuses
/// the whole statement rather than oversell.
const WRITE: &str = r#"
WITH claims AS (
    INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, reward,
                               created_at, processed_at, updated_at)
    SELECT id, user_id, event_id, reward_id, slot, status, NULL, reward, created_at, processed_at, created_at
    FROM json_to_recordset($1::text::json) AS c(id text, user_id text, event_id text, reward_id text, slot bigint,
                                                status text, reward text, created_at bigint, processed_at bigint)
),
refusals AS (
    INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, reward,
                               created_at, processed_at, updated_at, refusal)
    SELECT id, user_id, event_id, reward_id, NULL, 'REJECTED', reason, reward, at, NULL, at, true
    FROM json_to_recordset($2::text::json) AS r(id text, user_id text, event_id text, reward_id text, reason text,
                                                reward text, at bigint)
    ON CONFLICT (user_id, reward_id) WHERE refusal DO UPDATE SET reason = excluded.reason, updated_at = excluded.updated_at
),
stock AS (
    UPDATE rewards SET remaining = remaining - t.n
    FROM json_to_recordset($3::text::json) AS t(id text, n bigint) WHERE rewards.id = t.id
),
payouts AS (
    INSERT INTO payouts (claim_id, next_attempt_at)
    SELECT claim_id, at FROM json_to_recordset($4::text::json) AS p(claim_id text, at bigint)
),
answers AS (
    UPDATE idempotency_keys k SET response_status = a.status, response_body = a.body
    FROM json_to_recordset($5::text::json) AS a(user_id text, key text, status bigint, body text)
    WHERE k.user_id = a.user_id AND k.key = a.key
)
SELECT 1
"#;

pub async fn read(tx: &mut Transaction<'_, Postgres>, needs: &Needs) -> Result<Snapshot, sqlx::Error> {
    let conn: &mut PgConnection = tx;
    let rewards: Vec<RewardState> = sqlx::query_as(LOCK_REWARDS).bind(&needs.rewards).fetch_all(&mut *conn).await?;
    let slots: Vec<HeldSlot> =
        sqlx::query_as(HELD_SLOTS).bind(&needs.pair_users).bind(&needs.pair_rewards).fetch_all(&mut *conn).await?;
    let keys: Vec<KeyState> = if needs.keys.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(LOCK_KEYS).bind(&needs.key_users).bind(&needs.keys).fetch_all(&mut *conn).await?
    };
    Ok(Snapshot { rewards, slots, keys })
}

pub async fn write(tx: &mut Transaction<'_, Postgres>, writes: &Writes<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(WRITE)
        .bind(json(&writes.claims))
        .bind(json(&writes.refusals))
        .bind(json(&writes.taken))
        .bind(json(&writes.payouts))
        .bind(json(&writes.answers))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
