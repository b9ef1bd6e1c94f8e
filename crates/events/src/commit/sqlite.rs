//! A grant batch on SQLite: in-process, so round trips cost little; a few
//! statements in one `BEGIN IMMEDIATE` transaction (which holds the write
//! lock from the start), with the decisions made in [`decide`] against the
//! rows read — the same rule, in the same order, as the PostgreSQL statement
//! (which slot number a grant takes may differ: here the lowest free one,
//! there the next above the highest first; any free slot keeps the limit).

use std::collections::{HashMap, HashSet};

use rewards_kit::store::StoreKind;
use serde::Serialize;
use sqlx::SqlitePool;

use super::{Decision, Grant, Outcome};
use crate::batch::{self, TransitionRow, json};

/// A reward as the batch reads it, with the versions the claims were checked against.
#[derive(Debug, sqlx::FromRow)]
struct Locked {
    id: String,
    event_id: String,
    stock: Option<i64>,
    remaining: Option<i64>,
    per_user_limit: i64,
    reward_version: i64,
    event_version: i64,
}

/// What one player holds of one reward: how many live slots, the highest.
#[derive(Debug, sqlx::FromRow)]
struct Holding {
    user_id: String,
    reward_id: String,
    live: i64,
    highest: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct LiveSlot {
    user_id: String,
    reward_id: String,
    slot: i64,
}

#[derive(Serialize)]
struct Pair<'a> {
    user_id: &'a str,
    reward_id: &'a str,
}

#[derive(Serialize)]
struct ClaimInsert<'a> {
    id: &'a str,
    user_id: &'a str,
    event_id: &'a str,
    reward_id: &'a str,
    slot: i64,
    status: &'a str,
    reward: &'a str,
    created_at: i64,
}

#[derive(Serialize)]
struct PayoutInsert<'a> {
    claim_id: &'a str,
    at: i64,
}

const LOCKED: &str = "SELECT r.id, r.event_id, r.stock, r.remaining, r.per_user_limit, \
                      r.version AS reward_version, e.version AS event_version \
                      FROM rewards r JOIN events e ON e.id = r.event_id \
                      WHERE r.id IN (SELECT value FROM json_each($1))";
const HOLDINGS: &str = "SELECT c.user_id, c.reward_id, COUNT(*) AS live, MAX(c.slot) AS highest \
                        FROM json_each($1) AS k JOIN reward_claims c \
                        ON c.user_id = k.value->>'user_id' AND c.reward_id = k.value->>'reward_id' \
                        WHERE c.slot IS NOT NULL GROUP BY c.user_id, c.reward_id";
const SLOTS: &str = "SELECT c.user_id, c.reward_id, c.slot FROM json_each($1) AS k JOIN reward_claims c \
                     ON c.user_id = k.value->>'user_id' AND c.reward_id = k.value->>'reward_id' \
                     WHERE c.slot IS NOT NULL";
const INSERT_CLAIMS: &str = "INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, \
                             reward, created_at, processed_at, updated_at) \
                             SELECT value->>'id', value->>'user_id', value->>'event_id', value->>'reward_id', \
                             value->>'slot', value->>'status', NULL, value->>'reward', value->>'created_at', NULL, \
                             value->>'created_at' FROM json_each($1) WHERE true \
                             ON CONFLICT DO NOTHING RETURNING id";
const INSERT_PAYOUTS: &str =
    "INSERT INTO payouts (claim_id, next_attempt_at) SELECT value->>'claim_id', value->>'at' FROM json_each($1)";
const TAKE_STOCK: &str = "UPDATE rewards SET remaining = remaining - $1 WHERE id = $2 AND remaining >= $1";
const REMEMBER: &str =
    "UPDATE idempotency_keys SET response_status = 201, response_body = $1 WHERE user_id = $2 AND key = $3";

/// `grace`: how long (micros) the new payout rows wait before the poll may take them.
pub async fn write(pool: &SqlitePool, grants: &[&Grant], grace: i64) -> Result<Vec<Decision>, sqlx::Error> {
    let mut seen_rewards = HashSet::new();
    let rewards: Vec<&str> = grants.iter().map(|g| g.reward_id.as_str()).filter(|r| seen_rewards.insert(*r)).collect();
    let mut seen_pairs = HashSet::new();
    let pairs: Vec<Pair> = grants
        .iter()
        .filter(|g| seen_pairs.insert((g.user_id.as_str(), g.reward_id.as_str())))
        .map(|g| Pair { user_id: &g.user_id, reward_id: &g.reward_id })
        .collect();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let locked: Vec<Locked> = sqlx::query_as(LOCKED).bind(json(&rewards)).fetch_all(&mut *tx).await?;
    let holdings: Vec<Holding> = sqlx::query_as(HOLDINGS).bind(json(&pairs)).fetch_all(&mut *tx).await?;
    let gapped: Vec<Pair> = holdings
        .iter()
        .filter(|h| h.live < h.highest)
        .map(|h| Pair { user_id: &h.user_id, reward_id: &h.reward_id })
        .collect();
    let slots: Vec<LiveSlot> = if gapped.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(SLOTS).bind(json(&gapped)).fetch_all(&mut *tx).await?
    };
    let (mut decisions, accepted) = decide(grants, &locked, &holdings, &slots);

    let claims: Vec<ClaimInsert> = accepted
        .iter()
        .map(|&(i, slot)| {
            let g = grants[i];
            ClaimInsert {
                id: &g.claim_id,
                user_id: &g.user_id,
                event_id: &g.event_id,
                reward_id: &g.reward_id,
                slot,
                status: g.status,
                reward: &g.reward,
                created_at: g.at,
            }
        })
        .collect();
    let inserted: HashSet<String> = if claims.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar(INSERT_CLAIMS).bind(json(&claims)).fetch_all(&mut *tx).await?.into_iter().collect()
    };
    let written: Vec<&Grant> =
        accepted.iter().map(|&(i, _)| grants[i]).filter(|g| inserted.contains(&g.claim_id)).collect();

    let limited: HashSet<&str> = locked.iter().filter(|l| l.stock.is_some()).map(|l| l.id.as_str()).collect();
    let mut taken: HashMap<&str, i64> = HashMap::new();
    for g in written.iter().filter(|g| limited.contains(g.reward_id.as_str())) {
        *taken.entry(g.reward_id.as_str()).or_default() += 1;
    }
    for (reward, n) in &taken {
        if sqlx::query(TAKE_STOCK).bind(n).bind(reward).execute(&mut *tx).await?.rows_affected() != 1 {
            // The write lock was held since the stock was read: refuse the batch rather than oversell.
            return Err(sqlx::Error::Protocol(format!("the stock of reward {reward} changed under the write lock")));
        }
    }
    if !written.is_empty() {
        let transitions: Vec<TransitionRow> = written
            .iter()
            .map(|g| TransitionRow {
                id: g.transition_id.clone(),
                claim_id: &g.claim_id,
                from_status: None,
                to_status: g.status,
                actor_id: &g.actor,
                reason: None,
                at: g.at,
            })
            .collect();
        sqlx::query(batch::insert_transitions(StoreKind::Sqlite)).bind(json(&transitions)).execute(&mut *tx).await?;
        let payouts: Vec<PayoutInsert> = written
            .iter()
            .filter(|g| g.status == "APPROVED")
            .map(|g| PayoutInsert { claim_id: &g.claim_id, at: g.at + grace })
            .collect();
        if !payouts.is_empty() {
            sqlx::query(INSERT_PAYOUTS).bind(json(&payouts)).execute(&mut *tx).await?;
        }
    }
    for g in &written {
        if let Some((key, body)) = &g.key {
            sqlx::query(REMEMBER).bind(body).bind(&g.user_id).bind(key).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;

    for &(i, _) in &accepted {
        decisions[i] =
            if inserted.contains(&grants[i].claim_id) { Decision::Done(Outcome::Granted) } else { Decision::Again };
    }
    Ok(decisions)
}

/// A player's slots of a reward as the batch hands them out.
#[derive(Debug, Default)]
struct Held {
    live: i64,
    highest: i64,
    /// Known when some slot below the highest is free (a rejected claim gave it back).
    slots: Option<Vec<i64>>,
}

impl Held {
    /// The lowest free slot up to `limit`, taken; `None` when all are held.
    fn take(&mut self, limit: i64) -> Option<i64> {
        if self.live >= limit {
            return None;
        }
        let slot = match &mut self.slots {
            Some(slots) => {
                let free = (1..=limit).find(|s| !slots.contains(s))?;
                slots.push(free);
                free
            }
            // No gaps: the slots are exactly 1..=highest.
            None => self.highest + 1,
        };
        self.live += 1;
        self.highest = self.highest.max(slot);
        Some(slot)
    }
}

/// The rule, applied in order of arrival against what the batch read: a
/// decision per grant, and the accepted ones (index, slot) — decided for
/// good once their insert goes through.
fn decide(
    grants: &[&Grant],
    locked: &[Locked],
    holdings: &[Holding],
    slots: &[LiveSlot],
) -> (Vec<Decision>, Vec<(usize, i64)>) {
    let locked: HashMap<&str, &Locked> = locked.iter().map(|l| (l.id.as_str(), l)).collect();
    let mut held: HashMap<(&str, &str), Held> = holdings
        .iter()
        .map(|h| ((h.user_id.as_str(), h.reward_id.as_str()), Held { live: h.live, highest: h.highest, slots: None }))
        .collect();
    for s in slots {
        let entry = held.entry((s.user_id.as_str(), s.reward_id.as_str())).or_default();
        entry.slots.get_or_insert_with(Vec::new).push(s.slot);
    }
    let mut remaining: HashMap<&str, Option<i64>> = locked.iter().map(|(id, l)| (*id, l.remaining)).collect();
    let mut decisions = Vec::with_capacity(grants.len());
    let mut accepted = Vec::new();
    for (i, g) in grants.iter().enumerate() {
        let current = locked.get(g.reward_id.as_str()).filter(|l| {
            l.event_id == g.event_id && l.reward_version == g.reward_version && l.event_version == g.event_version
        });
        let Some(reward) = current else {
            decisions.push(Decision::Done(Outcome::Stale));
            continue;
        };
        let holding = held.entry((g.user_id.as_str(), g.reward_id.as_str())).or_default();
        if holding.live >= reward.per_user_limit {
            decisions.push(Decision::Done(Outcome::Duplicate { limit: reward.per_user_limit }));
            continue;
        }
        match remaining.get_mut(reward.id.as_str()).expect("every locked reward has an entry") {
            Some(0) => {
                decisions.push(Decision::Done(Outcome::OutOfStock));
                continue;
            }
            Some(n) => *n -= 1,
            None => {}
        }
        let slot = holding.take(reward.per_user_limit).expect("a player below the limit has a free slot");
        accepted.push((i, slot));
        // Decided once the insert says the slot was still free.
        decisions.push(Decision::Again);
    }
    (decisions, accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(id: &str, stock: Option<i64>, limit: i64) -> Locked {
        Locked {
            id: id.into(),
            event_id: "e".into(),
            stock,
            remaining: stock,
            per_user_limit: limit,
            reward_version: 1,
            event_version: 1,
        }
    }

    fn grant(n: usize, user: &str, reward: &str) -> Grant {
        Grant {
            claim_id: format!("c{n}"),
            transition_id: format!("t{n}"),
            user_id: user.into(),
            event_id: "e".into(),
            reward_id: reward.into(),
            actor: user.into(),
            at: 50,
            status: "APPROVED",
            reward: "{}".into(),
            reward_version: 1,
            event_version: 1,
            key: None,
        }
    }

    fn name(d: &Decision) -> &'static str {
        match d {
            Decision::Again => "accepted",
            Decision::Done(Outcome::Stale) => "stale",
            Decision::Done(Outcome::Duplicate { .. }) => "duplicate",
            Decision::Done(Outcome::OutOfStock) => "out of stock",
            Decision::Done(Outcome::Granted) => "granted",
        }
    }

    #[test]
    fn a_batch_is_decided_in_the_contracts_order_and_in_order_of_arrival() {
        let rewards = [locked("stocked", Some(2), 2), locked("free", None, 1)];
        let holdings = [Holding { user_id: "ann".into(), reward_id: "stocked".into(), live: 1, highest: 1 }];
        let grants = [
            grant(0, "ann", "stocked"),
            grant(1, "ann", "stocked"),
            grant(2, "bob", "stocked"),
            grant(3, "cat", "stocked"),
            grant(4, "bob", "free"),
            grant(5, "bob", "free"),
            Grant { event_id: "other".into(), ..grant(6, "bob", "free") },
            Grant { reward_version: 0, ..grant(7, "dan", "free") },
            Grant { event_version: 2, ..grant(8, "dan", "free") },
            grant(9, "dan", "gone"),
        ];
        let refs: Vec<&Grant> = grants.iter().collect();
        let (decisions, accepted) = decide(&refs, &rewards, &holdings, &[]);
        let got: Vec<&str> = decisions.iter().map(name).collect();
        assert_eq!(
            got,
            [
                "accepted",
                "duplicate",
                "accepted",
                "out of stock",
                "accepted",
                "duplicate",
                "stale",
                "stale",
                "stale",
                "stale"
            ]
        );
        assert_eq!(accepted, [(0, 2), (2, 1), (4, 1)], "ann's second slot, then bob's first");
    }

    #[test]
    fn a_slot_freed_below_the_highest_is_handed_out_first() {
        let mut held = Held { live: 2, highest: 3, slots: Some(vec![1, 3]) };
        assert_eq!((held.take(4), held.take(4), held.take(4)), (Some(2), Some(4), None));
        let mut gapless = Held { live: 2, highest: 2, slots: None };
        assert_eq!((gapless.take(3), gapless.take(3)), (Some(3), None));
    }
}
