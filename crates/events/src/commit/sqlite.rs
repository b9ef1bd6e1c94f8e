//! A grant batch on SQLite: in-process, so round trips cost little; a few
//! statements in one `BEGIN IMMEDIATE` transaction, which holds the write
//! lock from the start, so what it reads cannot change before it commits.
//! Lists travel as one JSON parameter each, unpacked by `json_each`.

use sqlx::{Sqlite, Transaction};

use super::{Needs, Writes};
use crate::batch::json;
use crate::rule::{HeldSlot, KeyState, RewardState, Snapshot};

const REWARDS: &str = "SELECT r.id, r.event_id, r.remaining, r.per_user_limit, \
                       r.version AS reward_version, e.version AS event_version \
                       FROM rewards r JOIN events e ON e.id = r.event_id \
                       WHERE r.id IN (SELECT value FROM json_each($1))";
const HELD_SLOTS: &str = "SELECT c.user_id, c.reward_id, c.slot FROM json_each($1) AS p JOIN reward_claims c \
                          ON c.user_id = p.value->>'$[0]' AND c.reward_id = p.value->>'$[1]' \
                          WHERE c.slot IS NOT NULL";
const KEYS: &str = "SELECT k.user_id, k.key, k.claim_id, k.response_status IS NOT NULL AS answered \
                    FROM json_each($1) AS p JOIN idempotency_keys k \
                    ON k.user_id = p.value->>'$[0]' AND k.key = p.value->>'$[1]'";

const INSERT_CLAIMS: &str = "INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, \
                             reward, created_at, processed_at, updated_at) \
                             SELECT value->>'id', value->>'user_id', value->>'event_id', value->>'reward_id', \
                             value->>'slot', value->>'status', NULL, value->>'reward', value->>'created_at', \
                             value->>'processed_at', value->>'created_at' FROM json_each($1)";
const UPSERT_REFUSALS: &str = "INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, \
                               reward, created_at, processed_at, updated_at, refusal) \
                               SELECT value->>'id', value->>'user_id', value->>'event_id', value->>'reward_id', \
                               NULL, 'REJECTED', value->>'reason', value->>'reward', value->>'at', NULL, \
                               value->>'at', true FROM json_each($1) WHERE true \
                               ON CONFLICT (user_id, reward_id) WHERE refusal \
                               DO UPDATE SET reason = excluded.reason, updated_at = excluded.updated_at";
const TAKE_STOCK: &str = "UPDATE rewards SET remaining = remaining - t.n \
                          FROM (SELECT value->>'id' AS id, value->>'n' AS n FROM json_each($1)) AS t \
                          WHERE rewards.id = t.id";
const INSERT_PAYOUTS: &str =
    "INSERT INTO payouts (claim_id, next_attempt_at) SELECT value->>'claim_id', value->>'at' FROM json_each($1)";
const ANSWER_KEYS: &str = "UPDATE idempotency_keys SET response_status = a.status, response_body = a.body \
                           FROM (SELECT value->>'user_id' AS user_id, value->>'key' AS key, \
                           value->>'status' AS status, value->>'body' AS body FROM json_each($1)) AS a \
                           WHERE idempotency_keys.user_id = a.user_id AND idempotency_keys.key = a.key";

pub async fn read(tx: &mut Transaction<'_, Sqlite>, needs: &Needs) -> Result<Snapshot, sqlx::Error> {
    let pairs: Vec<(&String, &String)> = needs.pair_users.iter().zip(&needs.pair_rewards).collect();
    let rewards: Vec<RewardState> = sqlx::query_as(REWARDS).bind(json(&needs.rewards)).fetch_all(&mut **tx).await?;
    let slots: Vec<HeldSlot> = sqlx::query_as(HELD_SLOTS).bind(json(&pairs)).fetch_all(&mut **tx).await?;
    let keys: Vec<KeyState> = if needs.keys.is_empty() {
        Vec::new()
    } else {
        let keys: Vec<(&String, &String)> = needs.key_users.iter().zip(&needs.keys).collect();
        sqlx::query_as(KEYS).bind(json(&keys)).fetch_all(&mut **tx).await?
    };
    Ok(Snapshot { rewards, slots, keys })
}

pub async fn write(tx: &mut Transaction<'_, Sqlite>, writes: &Writes<'_>) -> Result<(), sqlx::Error> {
    let statements = [
        (INSERT_CLAIMS, writes.claims.is_empty(), json(&writes.claims)),
        (UPSERT_REFUSALS, writes.refusals.is_empty(), json(&writes.refusals)),
        (TAKE_STOCK, writes.taken.is_empty(), json(&writes.taken)),
        (INSERT_PAYOUTS, writes.payouts.is_empty(), json(&writes.payouts)),
        (ANSWER_KEYS, writes.answers.is_empty(), json(&writes.answers)),
    ];
    for (sql, empty, rows) in statements {
        if !empty {
            sqlx::query(sql).bind(rows).execute(&mut **tx).await?;
        }
    }
    Ok(())
}
