//! A grant batch on PostgreSQL: one statement, so one round trip and its own
//! transaction (committed before the answers go out).
//!
//! The statement takes the batch as a JSON array in arrival order and, in
//! its parts:
//! - `locked`: the batch's rewards, locked (`FOR UPDATE`, in id order), with
//!   their versions and their events' versions (events share-locked, so a
//!   change to one waits for the batch, or the batch for it);
//! - `held`: each player's highest live slot of each reward (one index probe);
//! - `checked` → `ranked` → `slotted` → `decided`: the rule in order of
//!   arrival, in a few sorted passes over the batch — stale versions refused;
//!   the n-th grant of a player and reward takes the n-th slot above the
//!   highest, then free ones below it while the player holds fewer than the
//!   limit (none left: `DUPLICATE_CLAIM`); the n-th slotted grant of a reward
//!   takes the n-th unit of its remaining stock (none left: `OUT_OF_STOCK` —
//!   for the player's later grants in the batch too, which never lacked a
//!   slot);
//! - `inserted`: the accepted claims (a slot taken meanwhile by another
//!   writer is skipped by the unique index, and that grant goes round again);
//! - `taken`, `transitions`, `payouts`, `answers`: the stock decrement per
//!   reward (the `remaining >= 0` check refuses the whole statement rather
//!   than oversell), the transitions, the payout rows and the idempotency
//!   answers of the inserted claims (matched by a hashed `IN`, so that no
//!   part loops over the batch once per row);
//! - and answers one row per grant saying what became of it.

use serde::Serialize;
use sqlx::PgPool;

use super::{Decision, Grant, Outcome};
use crate::batch::Ids;

const BATCH: &str = r#"
WITH g AS (
    SELECT * FROM json_to_recordset($1::text::json) AS g(
        i int, id text, tid text, user_id text, event_id text, reward_id text, actor text, at bigint,
        status text, reward text, reward_version bigint, event_version bigint, key text, body text)
),
locked AS (
    SELECT r.id, r.event_id, r.stock, r.remaining, r.per_user_limit,
           r.version AS reward_version, e.version AS event_version
    FROM rewards r JOIN events e ON e.id = r.event_id
    WHERE r.id = ANY($2) ORDER BY r.id FOR UPDATE OF r FOR SHARE OF e
),
held AS (
    SELECT p.user_id, p.reward_id,
           (SELECT coalesce(max(c.slot), 0) FROM reward_claims c
            WHERE c.user_id = p.user_id AND c.reward_id = p.reward_id AND c.slot IS NOT NULL) AS highest
    FROM (SELECT DISTINCT user_id, reward_id FROM g) p
),
checked AS (
    SELECT g.*, l.stock, l.remaining, l.per_user_limit, h.highest,
           (l.id IS NULL OR l.event_id <> g.event_id OR l.reward_version <> g.reward_version
            OR l.event_version <> g.event_version) AS stale
    FROM g JOIN held h ON h.user_id = g.user_id AND h.reward_id = g.reward_id
    LEFT JOIN locked l ON l.id = g.reward_id
),
ranked AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.user_id, c.reward_id, c.stale ORDER BY c.i) - 1 AS nth,
           greatest(c.per_user_limit - c.highest, 0) AS room
    FROM checked c
),
slotted AS (
    SELECT r.*,
           CASE WHEN r.stale THEN NULL
                WHEN r.nth < r.room THEN r.highest + r.nth + 1
                -- Past the room above the highest slot: a free one below it,
                -- while the player holds fewer than the limit.
                WHEN (SELECT count(*) FROM reward_claims c WHERE c.user_id = r.user_id
                      AND c.reward_id = r.reward_id AND c.slot IS NOT NULL) + r.nth >= r.per_user_limit THEN NULL
                ELSE (SELECT n FROM generate_series(1, least(r.highest, r.per_user_limit)) n
                      WHERE NOT EXISTS (SELECT 1 FROM reward_claims c WHERE c.user_id = r.user_id
                                        AND c.reward_id = r.reward_id AND c.slot = n)
                      ORDER BY n OFFSET r.nth - r.room LIMIT 1)
           END AS slot
    FROM ranked r
),
decided AS (
    SELECT s.*, s.slot IS NOT NULL AND (s.stock IS NULL OR s.nth_unit < s.remaining) AS accepted
    FROM (SELECT s.*, row_number() OVER (PARTITION BY s.reward_id, s.slot IS NOT NULL ORDER BY s.i) - 1 AS nth_unit
          FROM slotted s) s
),
answered AS (
    -- A slot was counted for each earlier grant of the same player and
    -- reward; if one of those found no stock, this one was never short of
    -- a slot, only of stock.
    SELECT d.*, coalesce(bool_or(d.slot IS NOT NULL AND NOT d.accepted) OVER (
               PARTITION BY d.user_id, d.reward_id ORDER BY d.i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
               false) AS short_before
    FROM decided d
),
inserted AS (
    INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, reward,
                               created_at, processed_at, updated_at)
    SELECT id, user_id, event_id, reward_id, slot, status, NULL, reward, at, NULL, at FROM decided WHERE accepted
    ON CONFLICT DO NOTHING
    RETURNING id, user_id, reward_id, status, created_at
),
taken AS (
    UPDATE rewards SET remaining = remaining - t.n
    FROM (SELECT reward_id, count(*) AS n FROM inserted GROUP BY reward_id) t
    WHERE rewards.id = t.reward_id AND rewards.stock IS NOT NULL
),
transitions AS (
    INSERT INTO claim_transitions (id, claim_id, from_status, to_status, actor_id, reason, at)
    SELECT d.tid, d.id, NULL, d.status, d.actor, NULL, d.at FROM decided d
    WHERE d.accepted AND d.id IN (SELECT id FROM inserted)
),
payouts AS (
    INSERT INTO payouts (claim_id, next_attempt_at)
    SELECT id, created_at + $3 FROM inserted WHERE status = 'APPROVED'
),
answers AS (
    UPDATE idempotency_keys k SET response_status = 201, response_body = d.body
    FROM decided d
    WHERE d.key IS NOT NULL AND d.id IN (SELECT id FROM inserted) AND k.user_id = d.user_id AND k.key = d.key
)
SELECT a.i,
       CASE WHEN a.id IN (SELECT id FROM inserted) THEN 'GRANTED'
            WHEN a.stale THEN 'STALE'
            WHEN a.accepted THEN 'AGAIN'
            WHEN a.slot IS NULL AND NOT a.short_before THEN 'DUPLICATE'
            ELSE 'OUT_OF_STOCK' END AS outcome,
       a.per_user_limit
FROM answered a ORDER BY a.i
"#;

#[derive(Serialize)]
struct Row<'a> {
    i: usize,
    id: &'a str,
    tid: &'a str,
    user_id: &'a str,
    event_id: &'a str,
    reward_id: &'a str,
    actor: &'a str,
    at: i64,
    status: &'a str,
    reward: &'a str,
    reward_version: i64,
    event_version: i64,
    key: Option<&'a str>,
    body: Option<&'a str>,
}

/// `grace`: how long (micros) the new payout rows wait before the poll may take them.
pub async fn write(pool: &PgPool, grants: &[&Grant], grace: i64) -> Result<Vec<Decision>, sqlx::Error> {
    let rows: Vec<Row> = grants
        .iter()
        .enumerate()
        .map(|(i, g)| Row {
            i,
            id: &g.claim_id,
            tid: &g.transition_id,
            user_id: &g.user_id,
            event_id: &g.event_id,
            reward_id: &g.reward_id,
            actor: &g.actor,
            at: g.at,
            status: g.status,
            reward: &g.reward,
            reward_version: g.reward_version,
            event_version: g.event_version,
            key: g.key.as_ref().map(|(key, _)| key.as_str()),
            body: g.key.as_ref().map(|(_, body)| body.as_str()),
        })
        .collect();
    let rewards = Ids::of(grants.iter().map(|g| g.reward_id.as_str()));
    let answers: Vec<(i32, String, Option<i64>)> =
        sqlx::query_as(BATCH).bind(crate::batch::json(&rows)).bind(rewards).bind(grace).fetch_all(pool).await?;
    if answers.iter().enumerate().any(|(k, (i, _, _))| *i as usize != k) || answers.len() != grants.len() {
        return Err(sqlx::Error::Protocol(format!("{} grants, answers out of step", grants.len())));
    }
    answers
        .into_iter()
        .map(|(_, outcome, limit)| match outcome.as_str() {
            "GRANTED" => Ok(Decision::Done(Outcome::Granted)),
            "STALE" => Ok(Decision::Done(Outcome::Stale)),
            "DUPLICATE" => Ok(Decision::Done(Outcome::Duplicate { limit: limit.unwrap_or(1) })),
            "OUT_OF_STOCK" => Ok(Decision::Done(Outcome::OutOfStock)),
            "AGAIN" => Ok(Decision::Again),
            other => Err(sqlx::Error::Protocol(format!("unknown grant outcome `{other}`"))),
        })
        .collect()
}
