//! Group commit of grants.
//!
//! A grant's decisive writes (the claim in a free per-user slot, the stock
//! taken, the transition, the payout row, the idempotency answer) must commit
//! before the client hears 201. Committing each grant alone makes every claim
//! wait for its own disk flush — and on a hot reward, for every earlier
//! claim's flush too, since each holds the reward's row until it commits.
//! Here one writer per shard of rewards gathers the grants of the claims in
//! flight — a claim announces itself when it starts, and the writer waits
//! for the announced ones to arrive, up to [`GATHER`], never for a batch size
//! that load may not reach — and decides them all in one transaction of a
//! handful of statements, whatever the batch's size:
//!
//! 1. the batch's rewards, locked (`FOR UPDATE`, in id order; SQLite's
//!    `BEGIN IMMEDIATE` holds the write lock), and their events;
//! 2. how many live slots its players hold of those rewards, and the highest
//!    (the slots themselves only where some were freed below it);
//! 3. in order of arrival: reward of that event or 404, event open or 400,
//!    a free slot below `perUserLimit` or `DUPLICATE_CLAIM`, a unit of stock
//!    or `OUT_OF_STOCK` — against the rows just read;
//! 4. one multi-row insert of the claims, skipping any slot another writer
//!    took meanwhile (the unique index decides; such a grant goes round
//!    again), then the stock (a guarded decrement per reward), the
//!    transitions, the payout rows and the idempotency answers;
//! 5. one commit, then every waiter hears its outcome.
//!
//! A reward always belongs to the same shard, so shards of one process never
//! contend for a row. If a batch fails as a whole, its grants are retried one
//! by one, so one bad grant cannot fail the others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rewards_kit::store::Store;
use rewards_kit::with_write_tx;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::batch::{self, TransitionRow, json};
use crate::claims::{ClaimRow, ClaimView, reward_snapshot};
use crate::store::{REWARD_COLUMNS, RewardRow};

/// Most grants in one transaction.
const MAX_BATCH: usize = 512;
/// Writers (each a transaction at a time).
const SHARDS: usize = 2;
/// Longest a writer waits for announced grants before writing what it has.
const GATHER: Duration = Duration::from_millis(1);
/// How often a grant goes round again after losing its slot to another writer.
const MAX_ROUNDS: u32 = 4;

/// One grant to decide and write.
#[derive(Debug, Clone)]
pub struct Grant {
    pub claim_id: String,
    pub user_id: String,
    pub event_id: String,
    pub reward_id: String,
    pub actor: String,
    /// When the claim was made (micros); the event must be open then.
    pub at: i64,
    /// The caller's `Idempotency-Key`: the 201 answer is stored with it.
    pub key: Option<String>,
}

/// What became of a grant.
#[derive(Debug, Clone)]
pub enum Outcome {
    Granted(Box<ClaimRow>),
    /// No such reward, or not of that event.
    NotFound,
    /// The event is not `ACTIVE`, or the claim is outside its window.
    NotActive,
    Duplicate {
        limit: i64,
    },
    OutOfStock,
}

type Job = (Grant, u32, oneshot::Sender<Result<Outcome, String>>);

#[derive(Clone)]
pub struct Committer {
    shards: Vec<Shard>,
}

#[derive(Clone)]
struct Shard {
    queue: mpsc::Sender<Job>,
    /// Claims announced and not yet answered (see [`Committer::announce`]).
    announced: Arc<AtomicUsize>,
}

/// A claim that may soon bring its grant: its writer waits for it. Dropped
/// without [`Announced::grant`] (the claim was refused before), it withdraws.
pub struct Announced {
    shard: Shard,
    pending: bool,
}

impl Committer {
    /// Starts the writers; they stop when the last `Committer` is dropped.
    pub fn start(store: Store) -> Self {
        let shards: Vec<(Shard, mpsc::Receiver<Job>)> = (0..SHARDS)
            .map(|_| {
                let (queue, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
                (Shard { queue, announced: Arc::new(AtomicUsize::new(0)) }, rx)
            })
            .collect();
        let mut senders = Vec::with_capacity(SHARDS);
        for (shard, rx) in shards {
            tokio::spawn(writer(store.clone(), rx, shard.queue.downgrade(), shard.announced.clone()));
            senders.push(shard);
        }
        Self { shards: senders }
    }

    /// Says that a claim of `reward_id` has started; its grant, if it gets
    /// that far, goes through the returned [`Announced`].
    pub fn announce(&self, reward_id: &str) -> Announced {
        let shard = self.shards[shard_of(reward_id)].clone();
        shard.announced.fetch_add(1, Ordering::AcqRel);
        Announced { shard, pending: true }
    }
}

impl Announced {
    /// Decides and writes `grant` with the others gathered; `Err` is a store
    /// failure. The writer counts the claim answered when it answers.
    pub async fn grant(mut self, grant: Grant) -> Result<Outcome, String> {
        let (reply, answer) = oneshot::channel();
        let queue = self.shard.queue.clone();
        self.pending = false;
        if queue.send((grant, 0, reply)).await.is_err() {
            self.shard.announced.fetch_sub(1, Ordering::AcqRel);
            return Err("the grant writer stopped".to_owned());
        }
        answer.await.map_err(|_| "the grant writer dropped the grant".to_owned())?
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if self.pending {
            self.shard.announced.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn shard_of(reward_id: &str) -> usize {
    // FNV-1a: stable across runs, cheap.
    let hash =
        reward_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % SHARDS as u64) as usize
}

/// The grants to write next: whatever is queued, plus those of the claims
/// announced and still on their way, waited for until [`GATHER`] has passed.
async fn gather(first: Job, rx: &mut mpsc::Receiver<Job>, announced: &AtomicUsize) -> Vec<Job> {
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + GATHER;
    loop {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() >= MAX_BATCH || batch.len() >= announced.load(Ordering::Acquire) {
            return batch;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(job)) => batch.push(job),
            _ => return batch,
        }
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Job>, again: mpsc::WeakSender<Job>, announced: Arc<AtomicUsize>) {
    while let Some(first) = rx.recv().await {
        let mut batch = gather(first, &mut rx, &announced).await;
        let grants: Vec<&Grant> = batch.iter().map(|(g, _, _)| g).collect();
        match write(&store, &grants).await {
            Ok(decisions) => {
                for (job, decision) in batch.into_iter().zip(decisions) {
                    settle(job, Ok(decision), &again, &announced);
                }
            }
            Err(err) if batch.len() == 1 => {
                settle(batch.pop().expect("one job"), Err(err.to_string()), &again, &announced);
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "a grant batch failed; writing its grants one by one");
                for job in batch {
                    let decision = write(&store, &[&job.0]).await.map(|mut d| d.remove(0)).map_err(|e| e.to_string());
                    settle(job, decision, &again, &announced);
                }
            }
        }
    }
}

/// Answers a grant, or sends it round again when it lost its slot.
fn settle(job: Job, decision: Result<Decision, String>, again: &mpsc::WeakSender<Job>, announced: &Arc<AtomicUsize>) {
    let (grant, rounds, reply) = job;
    match decision {
        Ok(Decision::Done(outcome)) => answer(reply, Ok(outcome), announced),
        Ok(Decision::Again) if rounds + 1 < MAX_ROUNDS => requeue(again, (grant, rounds + 1, reply), announced),
        Ok(Decision::Again) => {
            answer(reply, Err("the claim kept losing its slot to another writer".to_owned()), announced)
        }
        Err(err) => answer(reply, Err(err), announced),
    }
}

/// Sends a claim its outcome; it no longer counts as announced.
fn answer(reply: oneshot::Sender<Result<Outcome, String>>, outcome: Result<Outcome, String>, announced: &AtomicUsize) {
    announced.fetch_sub(1, Ordering::AcqRel);
    let _ = reply.send(outcome);
}

/// Puts a grant back in its writer's queue, from a task of its own: the
/// writer must not wait for room in the queue only it empties.
fn requeue(again: &mpsc::WeakSender<Job>, job: Job, announced: &Arc<AtomicUsize>) {
    let stopped = || Err("the grant writer stopped".to_owned());
    match again.upgrade() {
        Some(tx) => {
            let announced = announced.clone();
            tokio::spawn(async move {
                if let Err(mpsc::error::SendError((_, _, reply))) = tx.send(job).await {
                    answer(reply, stopped(), &announced);
                }
            });
        }
        None => answer(job.2, stopped(), announced),
    }
}

/// A grant's fate inside one batch.
enum Decision {
    Done(Outcome),
    /// Its slot went to another writer between our read and our insert.
    Again,
}

/// A reward as the batch reads it (locked), with its event's status and window.
#[derive(Debug, sqlx::FromRow)]
struct LockedReward {
    #[sqlx(flatten)]
    reward: RewardRow,
    event_status: String,
    event_start: i64,
    event_end: i64,
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

/// The batch's statements for one engine. Lists travel as one JSON array
/// parameter, so each statement's text is the same whatever the batch's
/// size (prepared once per connection).
struct Statements {
    rewards: String,
    holdings: &'static str,
    slots: &'static str,
    insert_claims: &'static str,
    insert_payouts: &'static str,
}

fn statements(store: &Store) -> Statements {
    let lock = if matches!(store, Store::Postgres(_)) { " FOR UPDATE OF r" } else { "" };
    let columns: Vec<String> = REWARD_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect();
    let rewards = format!(
        "SELECT {}, e.status AS event_status, e.start_at AS event_start, e.end_at AS event_end \
         FROM rewards r JOIN events e ON e.id = r.event_id WHERE r.id {} ORDER BY r.id{lock}",
        columns.join(", "),
        batch::in_list(store, 1)
    );
    match store {
        Store::Postgres(_) => Statements {
            rewards,
            holdings: "SELECT k.user_id, k.reward_id, h.live, h.highest \
                       FROM json_to_recordset($1::text::json) AS k(user_id text, reward_id text) \
                       CROSS JOIN LATERAL (SELECT COUNT(*) AS live, COALESCE(MAX(c.slot), 0) AS highest \
                       FROM reward_claims c WHERE c.user_id = k.user_id AND c.reward_id = k.reward_id \
                       AND c.slot IS NOT NULL) h WHERE h.live > 0",
            slots: "SELECT k.user_id, k.reward_id, s.slot \
                    FROM json_to_recordset($1::text::json) AS k(user_id text, reward_id text) \
                    CROSS JOIN LATERAL (SELECT c.slot FROM reward_claims c WHERE c.user_id = k.user_id \
                    AND c.reward_id = k.reward_id AND c.slot IS NOT NULL) s",
            insert_claims: "INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, reward, \
                            created_at, processed_at, updated_at) \
                            SELECT id, user_id, event_id, reward_id, slot, status, NULL, reward, created_at, NULL, created_at \
                            FROM json_to_recordset($1::text::json) AS c(id text, user_id text, event_id text, \
                            reward_id text, slot bigint, status text, reward text, created_at bigint) \
                            ON CONFLICT DO NOTHING RETURNING id",
            insert_payouts: "INSERT INTO payouts (claim_id, next_attempt_at) SELECT claim_id, at \
                             FROM json_to_recordset($1::text::json) AS p(claim_id text, at bigint)",
        },
        Store::Sqlite(_) => Statements {
            rewards,
            holdings: "SELECT c.user_id, c.reward_id, COUNT(*) AS live, MAX(c.slot) AS highest \
                       FROM json_each($1) AS k JOIN reward_claims c \
                       ON c.user_id = k.value->>'user_id' AND c.reward_id = k.value->>'reward_id' \
                       WHERE c.slot IS NOT NULL GROUP BY c.user_id, c.reward_id",
            slots: "SELECT c.user_id, c.reward_id, c.slot FROM json_each($1) AS k JOIN reward_claims c \
                    ON c.user_id = k.value->>'user_id' AND c.reward_id = k.value->>'reward_id' \
                    WHERE c.slot IS NOT NULL",
            insert_claims: "INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, reward, \
                            created_at, processed_at, updated_at) \
                            SELECT value->>'id', value->>'user_id', value->>'event_id', value->>'reward_id', \
                            value->>'slot', value->>'status', NULL, value->>'reward', value->>'created_at', NULL, \
                            value->>'created_at' FROM json_each($1) WHERE true \
                            ON CONFLICT DO NOTHING RETURNING id",
            insert_payouts: "INSERT INTO payouts (claim_id, next_attempt_at) \
                             SELECT value->>'claim_id', value->>'at' FROM json_each($1)",
        },
    }
}

/// A grant that passed every check, with the claim it makes.
struct Accepted {
    index: usize,
    row: ClaimRow,
    limited: bool,
    pays_out: bool,
}

/// Decides and writes `grants` in one transaction; one decision per grant, in order.
async fn write(store: &Store, grants: &[&Grant]) -> Result<Vec<Decision>, sqlx::Error> {
    let sql = statements(store);
    let insert_transitions = batch::insert_transitions(store);
    let reward_ids: Vec<&str> = unique(grants.iter().map(|g| g.reward_id.as_str()));
    let mut seen = HashSet::new();
    let pairs: Vec<Pair> = grants
        .iter()
        .filter(|g| seen.insert((g.user_id.as_str(), g.reward_id.as_str())))
        .map(|g| Pair { user_id: &g.user_id, reward_id: &g.reward_id })
        .collect();
    let reward_ids = batch::Ids::of(reward_ids);
    let remember =
        "UPDATE idempotency_keys SET response_status = 201, response_body = $1 WHERE user_id = $2 AND key = $3";
    let take_stock = "UPDATE rewards SET remaining = remaining - $1 WHERE id = $2 AND remaining >= $1";

    let decisions = with_write_tx!(store, |tx| {
        let rewards: Vec<LockedReward> = sqlx::query_as(&sql.rewards).bind(&reward_ids).fetch_all(&mut *tx).await?;
        let holdings: Vec<Holding> = sqlx::query_as(sql.holdings).bind(json(&pairs)).fetch_all(&mut *tx).await?;
        let gapped: Vec<Pair> = holdings
            .iter()
            .filter(|h| h.live < h.highest)
            .map(|h| Pair { user_id: &h.user_id, reward_id: &h.reward_id })
            .collect();
        let slots: Vec<LiveSlot> = if gapped.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(sql.slots).bind(json(&gapped)).fetch_all(&mut *tx).await?
        };
        let (mut decisions, accepted) = decide(grants, &rewards, &holdings, &slots);

        let claims: Vec<ClaimInsert> = accepted
            .iter()
            .map(|a| ClaimInsert {
                id: &a.row.id,
                user_id: &a.row.user_id,
                event_id: &a.row.event_id,
                reward_id: &a.row.reward_id,
                slot: a.row.slot.expect("an accepted claim has its slot"),
                status: &a.row.status,
                reward: &a.row.reward,
                created_at: a.row.created_at,
            })
            .collect();
        let inserted: HashSet<String> = if claims.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar(sql.insert_claims).bind(json(&claims)).fetch_all(&mut *tx).await?.into_iter().collect()
        };
        let written: Vec<&Accepted> = accepted.iter().filter(|a| inserted.contains(&a.row.id)).collect();

        let mut taken: HashMap<&str, i64> = HashMap::new();
        for a in written.iter().filter(|a| a.limited) {
            *taken.entry(a.row.reward_id.as_str()).or_default() += 1;
        }
        for (reward, n) in &taken {
            let updated = sqlx::query(take_stock).bind(n).bind(reward).execute(&mut *tx).await?.rows_affected();
            if updated != 1 {
                // The rows were locked and counted above: this cannot happen; refuse the batch rather than oversell.
                return Err(sqlx::Error::Protocol(format!("stock of reward {reward} changed under its lock")));
            }
        }
        if !written.is_empty() {
            let transitions: Vec<TransitionRow> = written
                .iter()
                .map(|a| TransitionRow {
                    id: crate::new_id(),
                    claim_id: &a.row.id,
                    from_status: None,
                    to_status: &a.row.status,
                    actor_id: &grants[a.index].actor,
                    reason: None,
                    at: a.row.created_at,
                })
                .collect();
            sqlx::query(insert_transitions).bind(json(&transitions)).execute(&mut *tx).await?;
            let payouts: Vec<PayoutInsert> = written
                .iter()
                .filter(|a| a.pays_out)
                .map(|a| PayoutInsert { claim_id: &a.row.id, at: a.row.created_at })
                .collect();
            if !payouts.is_empty() {
                sqlx::query(sql.insert_payouts).bind(json(&payouts)).execute(&mut *tx).await?;
            }
        }
        for a in &written {
            if let Some(key) = &grants[a.index].key {
                let body = serde_json::to_string(&ClaimView::from_row(&a.row)).unwrap_or_default();
                sqlx::query(remember).bind(body).bind(&a.row.user_id).bind(key).execute(&mut *tx).await?;
            }
        }
        for a in accepted {
            decisions[a.index] =
                if inserted.contains(&a.row.id) { Decision::Done(Outcome::Granted(Box::new(a.row))) } else { Decision::Again };
        }
        decisions
    });
    Ok(decisions)
}

/// The rule, applied in order of arrival against what the batch read: every
/// grant gets a decision; the accepted ones get their claims (slot, status
/// and the reward as it is now).
fn decide(
    grants: &[&Grant],
    rewards: &[LockedReward],
    holdings: &[Holding],
    slots: &[LiveSlot],
) -> (Vec<Decision>, Vec<Accepted>) {
    let rewards: HashMap<&str, &LockedReward> = rewards.iter().map(|r| (r.reward.id.as_str(), r)).collect();
    let mut held: HashMap<(&str, &str), Held> = holdings
        .iter()
        .map(|h| ((h.user_id.as_str(), h.reward_id.as_str()), Held { live: h.live, highest: h.highest, slots: None }))
        .collect();
    for s in slots {
        let entry = held.entry((s.user_id.as_str(), s.reward_id.as_str())).or_default();
        entry.slots.get_or_insert_with(Vec::new).push(s.slot);
    }
    let mut remaining: HashMap<&str, Option<i64>> = rewards.iter().map(|(id, r)| (*id, r.reward.remaining)).collect();
    let mut snapshots: HashMap<&str, String> = HashMap::new();
    let mut decisions = Vec::with_capacity(grants.len());
    let mut accepted = Vec::new();
    for (index, g) in grants.iter().enumerate() {
        let Some(locked) = rewards.get(g.reward_id.as_str()).filter(|r| r.reward.event_id == g.event_id) else {
            decisions.push(Decision::Done(Outcome::NotFound));
            continue;
        };
        let reward = &locked.reward;
        if locked.event_status != "ACTIVE" || g.at < locked.event_start || g.at > locked.event_end {
            decisions.push(Decision::Done(Outcome::NotActive));
            continue;
        }
        let holding = held.entry((g.user_id.as_str(), g.reward_id.as_str())).or_default();
        if holding.live >= reward.per_user_limit {
            decisions.push(Decision::Done(Outcome::Duplicate { limit: reward.per_user_limit }));
            continue;
        }
        let left = remaining.get_mut(reward.id.as_str()).expect("every read reward has an entry");
        match left {
            Some(0) => {
                decisions.push(Decision::Done(Outcome::OutOfStock));
                continue;
            }
            Some(n) => *n -= 1,
            None => {}
        }
        let slot = holding.take(reward.per_user_limit).expect("a player below the limit has a free slot");
        let snapshot = snapshots.entry(reward.id.as_str()).or_insert_with(|| reward_snapshot(reward).to_string());
        let status = if reward.requires_approval { "PENDING" } else { "APPROVED" };
        let row = ClaimRow {
            id: g.claim_id.clone(),
            user_id: g.user_id.clone(),
            event_id: g.event_id.clone(),
            reward_id: g.reward_id.clone(),
            slot: Some(slot),
            status: status.to_owned(),
            reason: None,
            reward: snapshot.clone(),
            created_at: g.at,
            processed_at: None,
            updated_at: g.at,
        };
        accepted.push(Accepted { index, row, limited: reward.stock.is_some(), pays_out: !reward.requires_approval });
        // Decided once the insert says the slot was still free.
        decisions.push(Decision::Again);
    }
    (decisions, accepted)
}

fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|i| seen.insert(*i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reward(id: &str, stock: Option<i64>, limit: i64) -> RewardRow {
        RewardRow {
            id: id.into(),
            event_id: "e".into(),
            name: "Points".into(),
            kind: "POINT".into(),
            details: "{}".into(),
            quantity: 1,
            stock,
            remaining: stock,
            per_user_limit: limit,
            requires_approval: false,
            created_by: "op".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn grant(n: usize, user: &str, reward: &str) -> Grant {
        Grant {
            claim_id: format!("c{n}"),
            user_id: user.into(),
            event_id: "e".into(),
            reward_id: reward.into(),
            actor: user.into(),
            at: 50,
            key: None,
        }
    }

    fn outcome(d: &Decision) -> &'static str {
        match d {
            Decision::Again => "granted",
            Decision::Done(Outcome::NotFound) => "not found",
            Decision::Done(Outcome::NotActive) => "not active",
            Decision::Done(Outcome::Duplicate { .. }) => "duplicate",
            Decision::Done(Outcome::OutOfStock) => "out of stock",
            Decision::Done(Outcome::Granted(_)) => "granted already",
        }
    }

    #[test]
    fn a_batch_is_decided_in_the_contracts_order_and_in_order_of_arrival() {
        let open = |reward| LockedReward { reward, event_status: "ACTIVE".into(), event_start: 0, event_end: 100 };
        let rewards = [open(reward("stocked", Some(2), 2)), open(reward("free", None, 1))];
        let holdings = [Holding { user_id: "ann".into(), reward_id: "stocked".into(), live: 1, highest: 1 }];
        let grants = [
            grant(0, "ann", "stocked"),
            grant(1, "ann", "stocked"),
            grant(2, "bob", "stocked"),
            grant(3, "cat", "stocked"),
            grant(4, "bob", "free"),
            grant(5, "bob", "free"),
            Grant { event_id: "other".into(), ..grant(6, "bob", "free") },
            Grant { at: 101, ..grant(7, "dan", "free") },
        ];
        let refs: Vec<&Grant> = grants.iter().collect();
        let (decisions, accepted) = decide(&refs, &rewards, &holdings, &[]);
        let got: Vec<&str> = decisions.iter().map(outcome).collect();
        assert_eq!(
            got,
            ["granted", "duplicate", "granted", "out of stock", "granted", "duplicate", "not found", "not active"]
        );
        let slots: Vec<(usize, Option<i64>)> = accepted.iter().map(|a| (a.index, a.row.slot)).collect();
        assert_eq!(slots, [(0, Some(2)), (2, Some(1)), (4, Some(1))], "ann's second slot, then bob's first");
    }

    #[test]
    fn a_slot_freed_below_the_highest_is_handed_out_first() {
        let mut held = Held { live: 2, highest: 3, slots: Some(vec![1, 3]) };
        assert_eq!((held.take(4), held.take(4), held.take(4)), (Some(2), Some(4), None));
        let mut gapless = Held { live: 2, highest: 2, slots: None };
        assert_eq!((gapless.take(3), gapless.take(3)), (Some(3), None));
    }
}
