//! Group commit of grants.
//!
//! A grant's decisive writes (the claim in a free per-user slot, the stock
//! taken, the payout row of an external sink, the idempotency answer) must
//! commit before the client hears 201. Committing each grant alone makes
//! every claim wait for its own disk flush — and on a hot reward, for every
//! earlier claim's flush too, since each holds the reward's row until it
//! commits.
//!
//! Here one writer per shard of rewards gathers the grants of the claims in
//! flight — a claim announces itself when it starts, and the writer waits for
//! the announced ones to arrive, up to [`GATHER`], never for a batch size that
//! load may not reach — and then, in one transaction:
//!
//! 1. locks and reads what the batch needs (the store's `read`): its rewards
//!    (`FOR UPDATE`, in id order; their events share-locked), then the live
//!    slots of its players in them and its idempotency keys;
//! 2. decides every grant in order of arrival with [`rule::decide`], the one
//!    statement of the rule for both stores;
//! 3. writes what was decided (the store's `write`): claims, condition
//!    refusals, one stock update per reward, payout rows, key answers;
//! 4. commits; then every waiter hears its verdict.
//!
//! Every grant's claim id is chosen before its batch is sent. When a batch's
//! fate is unknown (the commit was sent and no answer came back), the writer
//! asks the store whether the batch's first claim or key answer exists before
//! deciding anything again: if it does, the batch committed and its verdicts
//! stand; if the store cannot be asked, each grant's outcome is
//! [`GrantError::Unknown`] and the claim's key stays open for the client's
//! retry to resolve. A store that cannot be reached fails the batch at once
//! ([`GrantError::Unavailable`]); only a batch refused for another reason is
//! retried grant by grant, so one bad grant cannot fail the others.
//!
//! A reward always belongs to the same shard, so the writers of one process
//! never contend for a row.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rewards_kit::store::{Store, is_unreachable};
use serde::Serialize;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::domain::ClaimStatus;
use crate::payout::{self, Handoff};
use crate::rule::{self, Ask, Decided, SoldOut, Verdict};

/// Most grants in one transaction.
const MAX_BATCH: usize = 512;
/// Writers (each a transaction at a time).
const SHARDS: usize = 2;
/// Longest a writer waits for announced grants before writing what it has.
const GATHER: Duration = Duration::from_millis(1);
/// How long a writer keeps asking an unsure store whether a batch committed.
const RESOLVE_FOR: Duration = Duration::from_secs(2);

/// One grant to decide and write, with what the claim was checked against.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Chosen before the batch is sent (by the claim's idempotency key, if any).
    pub claim_id: String,
    pub user_id: String,
    pub event_id: String,
    pub reward_id: String,
    /// When the claim was made (micros).
    pub at: i64,
    /// `PENDING`, `APPROVED` (an external sink pays it later) or `PAID` (the
    /// built-in ledger: written paid, nothing to deliver).
    pub status: ClaimStatus,
    /// The reward as claimed: `{name, type, details, quantity}` as JSON.
    pub reward: String,
    /// The versions of the reward and of the event the claim was checked
    /// against; if either has changed since, the grant is [`Verdict::Stale`].
    pub reward_version: i64,
    pub event_version: i64,
    /// What the condition misses, when it is not met.
    pub unmet: Option<String>,
    /// The caller's `Idempotency-Key`.
    pub key: Option<String>,
    /// The 201 body, stored with the key when the grant is written.
    pub body: String,
}

impl Grant {
    fn ask(&self) -> Ask<'_> {
        Ask {
            claim_id: &self.claim_id,
            user_id: &self.user_id,
            event_id: &self.event_id,
            reward_id: &self.reward_id,
            reward_version: self.reward_version,
            event_version: self.event_version,
            condition_met: self.unmet.is_none(),
            key: self.key.as_deref(),
        }
    }
}

/// Why a grant has no verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The store could not be reached; nothing was written.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The commit was sent and the store could not say whether it took it.
    #[error("the grant's outcome is unknown: {0}")]
    Unknown(String),
    /// Refused by the store for another reason; nothing was written.
    #[error("the grant failed: {0}")]
    Failed(String),
}

type Reply = oneshot::Sender<Result<Verdict, GrantError>>;
type Job = (Grant, Reply);

/// A batch that did not commit (definitely), or whose commit's fate is unknown.
#[derive(Debug)]
pub enum BatchError {
    NotCommitted(sqlx::Error),
    Unknown(Decided, sqlx::Error),
}

#[derive(Clone)]
pub struct Committer {
    shards: Vec<Shard>,
    /// Limited rewards known to be sold out, as the batches left them.
    sold_out: Arc<SoldOut>,
    faults: Arc<Faults>,
}

/// Faults a test injects into the writers.
#[derive(Debug, Default)]
pub struct Faults {
    /// Commits whose answer is to be lost: the batch commits, and the writer
    /// is told the commit failed.
    lose_commit_replies: AtomicUsize,
}

impl Faults {
    pub fn lose_next_commit_reply(&self) {
        self.lose_commit_replies.fetch_add(1, Ordering::AcqRel);
    }

    fn take_lost_reply(&self) -> bool {
        self.lose_commit_replies.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
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
    /// Committed grants that an external sink pays go to `handoff`.
    pub fn start(store: Store, handoff: Handoff) -> Self {
        let sold_out = Arc::new(SoldOut::default());
        let faults = Arc::new(Faults::default());
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let (queue, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
            let shard = Shard { queue, announced: Arc::new(AtomicUsize::new(0)) };
            let writer = Writer {
                store: store.clone(),
                link: Link::to(&store),
                announced: shard.announced.clone(),
                handoff: handoff.clone(),
                sold_out: sold_out.clone(),
                faults: faults.clone(),
            };
            tokio::spawn(writer.run(rx));
            shards.push(shard);
        }
        Self { shards, sold_out, faults }
    }

    /// Says that a claim of `reward_id` has started; its grant, if it gets
    /// that far, goes through the returned [`Announced`].
    pub fn announce(&self, reward_id: &str) -> Announced {
        let shard = self.shards[shard_of(reward_id)].clone();
        shard.announced.fetch_add(1, Ordering::AcqRel);
        Announced { shard, pending: true }
    }

    /// Whether `reward_id` at `version` is known to have no stock left.
    pub fn is_sold_out(&self, reward_id: &str, version: i64) -> bool {
        self.sold_out.is_sold_out(reward_id, version)
    }

    /// Forgets that `reward_id` was sold out (its stock came back here).
    pub fn forget_sold_out(&self, reward_id: &str) {
        self.sold_out.forget(reward_id);
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl Announced {
    /// Decides and writes `grant` with the others gathered. The writer counts
    /// the claim answered when it answers.
    pub async fn grant(mut self, grant: Grant) -> Result<Verdict, GrantError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.shard.queue.clone();
        // Until the writer has the grant, dropping this (the request gave up,
        // or the writer stopped) withdraws the announcement.
        let stopped = || GrantError::Failed("the grant writer stopped".to_owned());
        queue.send((grant, reply)).await.map_err(|_| stopped())?;
        self.pending = false;
        answer.await.map_err(|_| stopped())?
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

/// One shard's writer.
struct Writer {
    /// For questions about a batch whose commit went unanswered.
    store: Store,
    link: Link,
    announced: Arc<AtomicUsize>,
    handoff: Handoff,
    sold_out: Arc<SoldOut>,
    faults: Arc<Faults>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let batch = gather(first, &mut rx, &self.announced).await;
            let (grants, replies): (Vec<Grant>, Vec<Reply>) = batch.into_iter().unzip();
            let outcomes = self.commit(&grants).await;
            self.answer(&grants, replies, outcomes);
        }
    }

    /// Decides and writes a batch; on a definite failure of a larger batch
    /// for a reason other than an unreachable store, each grant alone.
    async fn commit(&mut self, grants: &[Grant]) -> Vec<Result<Verdict, GrantError>> {
        match self.write_resolved(grants).await {
            Ok(verdicts) => verdicts.into_iter().map(Ok).collect(),
            Err(err @ GrantError::Failed(_)) if grants.len() > 1 => {
                tracing::warn!(error = %err, size = grants.len(), "a grant batch failed; writing its grants one by one");
                let mut outcomes = Vec::with_capacity(grants.len());
                for grant in grants {
                    outcomes.push(self.write_resolved(std::slice::from_ref(grant)).await.map(|mut v| v.remove(0)));
                }
                outcomes
            }
            Err(err) => vec![Err(err); grants.len()],
        }
    }

    /// One batch, its unknown outcome resolved by looking, never by deciding
    /// again; decided again (once) only when the store says it did not commit.
    async fn write_resolved(&mut self, grants: &[Grant]) -> Result<Vec<Verdict>, GrantError> {
        for attempt in 0..2 {
            let (decided, err) = match write_batch(&mut self.link, grants, &self.faults).await {
                Ok(decided) => return Ok(self.learn(decided)),
                Err(BatchError::NotCommitted(err)) => return Err(classify(err)),
                Err(BatchError::Unknown(decided, err)) => (decided, err),
            };
            match resolve(&self.store, grants, &decided).await {
                Ok(true) => {
                    tracing::warn!(error = %err, "a grant batch's commit went unanswered; it had committed");
                    return Ok(self.learn(decided));
                }
                Ok(false) => {
                    tracing::warn!(error = %err, attempt, "a grant batch's commit went unanswered; it had not committed");
                }
                Err(why) => {
                    tracing::error!(error = %err, %why, "a grant batch's outcome is unknown");
                    return Err(GrantError::Unknown(why));
                }
            }
        }
        Err(GrantError::Unavailable("the store lost a batch's commit twice".to_owned()))
    }

    fn learn(&self, decided: Decided) -> Vec<Verdict> {
        self.sold_out.learn(&decided.left);
        decided.verdicts
    }

    /// Answers every waiter; hands the granted claims that an external sink
    /// pays to the dispatcher.
    fn answer(&self, grants: &[Grant], replies: Vec<Reply>, outcomes: Vec<Result<Verdict, GrantError>>) {
        for ((grant, reply), outcome) in grants.iter().zip(replies).zip(outcomes) {
            if matches!(outcome, Ok(Verdict::Granted { .. })) && grant.status == ClaimStatus::Approved {
                self.handoff.hand(grant.claim_id.clone(), grant.user_id.clone(), grant.reward.clone());
            }
            self.announced.fetch_sub(1, Ordering::AcqRel);
            let _ = reply.send(outcome);
        }
    }
}

/// An unreachable store is [`GrantError::Unavailable`]; anything else failed.
fn classify(err: sqlx::Error) -> GrantError {
    if is_unreachable(&err) { GrantError::Unavailable(err.to_string()) } else { GrantError::Failed(err.to_string()) }
}

/// A writer's way to its store: on PostgreSQL a connection of its own, kept
/// across batches (a pooled connection is pinged when taken and when given
/// back: two more round trips per batch); on SQLite the pool.
pub enum Link {
    Postgres { pool: PgPool, conn: Option<PgConnection> },
    Sqlite(SqlitePool),
}

impl Link {
    pub fn to(store: &Store) -> Self {
        match store {
            Store::Postgres(pool) => Link::Postgres { pool: pool.clone(), conn: None },
            Store::Sqlite(pool) => Link::Sqlite(pool.clone()),
        }
    }
}

/// The writer's PostgreSQL connection, opened when there is none (within
/// the pool's acquire timeout).
async fn connected<'c>(pool: &PgPool, conn: &'c mut Option<PgConnection>) -> Result<&'c mut PgConnection, sqlx::Error> {
    if conn.is_none() {
        let options = pool.connect_options();
        let timeout = pool.options().get_acquire_timeout();
        let opened = tokio::time::timeout(timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        *conn = Some(opened);
    }
    Ok(conn.as_mut().expect("connected"))
}

/// Locks, reads, decides, writes and commits one batch.
pub async fn write_batch(link: &mut Link, grants: &[Grant], faults: &Faults) -> Result<Decided, BatchError> {
    let asks: Vec<Ask> = grants.iter().map(Grant::ask).collect();
    let needs = Needs::of(grants);
    // An async block, so that `?` ends the batch, not `write_batch` (which
    // must still drop a PostgreSQL connection that failed).
    macro_rules! batch {
        ($module:ident, $tx:expr) => {
            async {
                let mut tx = $tx.await.map_err(BatchError::NotCommitted)?;
                let snapshot = $module::read(&mut tx, &needs).await.map_err(BatchError::NotCommitted)?;
                let decided = rule::decide(&asks, &snapshot);
                let writes = Writes::of(grants, &decided);
                $module::write(&mut tx, &writes).await.map_err(BatchError::NotCommitted)?;
                match tx.commit().await {
                    Err(err) => Err(BatchError::Unknown(decided, err)),
                    Ok(()) if faults.take_lost_reply() => Err(BatchError::Unknown(
                        decided,
                        sqlx::Error::Protocol("injected: the commit's reply was lost".into()),
                    )),
                    Ok(()) => Ok(decided),
                }
            }
            .await
        };
    }
    match link {
        Link::Postgres { pool, conn } => {
            let outcome = match connected(pool, conn).await {
                Ok(open) => batch!(postgres, Connection::begin(open)),
                Err(err) => Err(BatchError::NotCommitted(err)),
            };
            // A connection that failed is not trusted with the next batch.
            if outcome.is_err()
                && let Some(broken) = conn.take()
            {
                let _ = tokio::time::timeout(Duration::from_millis(100), broken.close()).await;
            }
            outcome
        }
        Link::Sqlite(pool) => batch!(sqlite, pool.begin_with("BEGIN IMMEDIATE")),
    }
}

/// Whether a batch whose commit went unanswered committed: its first claim,
/// or else its first key answer, is looked for (the batch is one transaction:
/// one of its writes is there exactly when all are). `Err` when the store
/// could not say within [`RESOLVE_FOR`].
async fn resolve(store: &Store, grants: &[Grant], decided: &Decided) -> Result<bool, String> {
    let writes = Writes::of(grants, decided);
    let marker = match (writes.claims.first(), writes.answers.first()) {
        (Some(claim), _) => Marker::Claim(claim.id.to_owned()),
        (None, Some(answer)) => Marker::Answer(answer.user_id.to_owned(), answer.key.to_owned()),
        // Nothing but refusal records: deciding again cannot grant twice.
        (None, None) => return Ok(false),
    };
    let started = tokio::time::Instant::now();
    loop {
        let found = match &marker {
            Marker::Claim(id) => {
                let sql = "SELECT COUNT(*) FROM reward_claims WHERE id = $1";
                rewards_kit::with_pool!(store, |pool| sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(pool).await)
            }
            Marker::Answer(user, key) => {
                let sql = "SELECT COUNT(*) FROM idempotency_keys WHERE user_id = $1 AND key = $2 \
                           AND response_status IS NOT NULL";
                rewards_kit::with_pool!(store, |pool| {
                    sqlx::query_scalar::<_, i64>(sql).bind(user).bind(key).fetch_one(pool).await
                })
            }
        };
        match found {
            Ok(n) => return Ok(n > 0),
            Err(err) if started.elapsed() >= RESOLVE_FOR => return Err(err.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

enum Marker {
    Claim(String),
    Answer(String, String),
}

/// What a batch must lock and read.
#[derive(Debug, Default)]
pub struct Needs {
    /// Distinct, sorted (the order rows are locked in).
    pub rewards: Vec<String>,
    /// Distinct (player, reward) pairs.
    pub pair_users: Vec<String>,
    pub pair_rewards: Vec<String>,
    /// Distinct (player, key) pairs.
    pub key_users: Vec<String>,
    pub keys: Vec<String>,
}

impl Needs {
    fn of(grants: &[Grant]) -> Self {
        let mut rewards: Vec<String> = grants.iter().map(|g| g.reward_id.clone()).collect();
        rewards.sort();
        rewards.dedup();
        let mut pairs: Vec<(&str, &str)> = grants.iter().map(|g| (g.user_id.as_str(), g.reward_id.as_str())).collect();
        pairs.sort();
        pairs.dedup();
        let mut keys: Vec<(&str, &str)> =
            grants.iter().filter_map(|g| Some((g.user_id.as_str(), g.key.as_deref()?))).collect();
        keys.sort();
        keys.dedup();
        let (pair_users, pair_rewards) = pairs.into_iter().map(|(u, r)| (u.to_owned(), r.to_owned())).unzip();
        let (key_users, keys) = keys.into_iter().map(|(u, k)| (u.to_owned(), k.to_owned())).unzip();
        Self { rewards, pair_users, pair_rewards, key_users, keys }
    }
}

/// A claim to insert.
#[derive(Debug, Serialize)]
pub struct ClaimInsert<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub event_id: &'a str,
    pub reward_id: &'a str,
    pub slot: i64,
    pub status: &'a str,
    pub reward: &'a str,
    pub created_at: i64,
    pub processed_at: Option<i64>,
}

/// A condition refusal, the one record of a player's refusals of a reward.
#[derive(Debug, Serialize)]
pub struct RefusalRow<'a> {
    pub id: String,
    pub user_id: &'a str,
    pub event_id: &'a str,
    pub reward_id: &'a str,
    pub reason: String,
    pub reward: &'a str,
    pub at: i64,
}

#[derive(Debug, Serialize)]
pub struct Taken<'a> {
    pub id: &'a str,
    pub n: i64,
}

#[derive(Debug, Serialize)]
pub struct PayoutInsert<'a> {
    pub claim_id: &'a str,
    pub at: i64,
}

/// An idempotency key's final answer.
#[derive(Debug, Serialize)]
pub struct KeyAnswer<'a> {
    pub user_id: &'a str,
    pub key: &'a str,
    pub status: i64,
    pub body: String,
}

/// The rows a batch's verdicts write.
#[derive(Debug, Default)]
pub struct Writes<'a> {
    pub claims: Vec<ClaimInsert<'a>>,
    pub refusals: Vec<RefusalRow<'a>>,
    pub taken: Vec<Taken<'a>>,
    pub payouts: Vec<PayoutInsert<'a>>,
    pub answers: Vec<KeyAnswer<'a>>,
}

impl<'a> Writes<'a> {
    fn of(grants: &'a [Grant], decided: &'a Decided) -> Self {
        let mut writes = Writes::default();
        // The outbox row of a payout handed over in memory waits before the poll may take it.
        let grace = payout::grace_micros();
        let mut refusals: HashMap<(&str, &str), RefusalRow> = HashMap::new();
        for (g, verdict) in grants.iter().zip(&decided.verdicts) {
            match verdict {
                Verdict::Granted { slot } => {
                    writes.claims.push(ClaimInsert {
                        id: &g.claim_id,
                        user_id: &g.user_id,
                        event_id: &g.event_id,
                        reward_id: &g.reward_id,
                        slot: *slot,
                        status: g.status.as_str(),
                        reward: &g.reward,
                        created_at: g.at,
                        processed_at: (g.status == ClaimStatus::Paid).then_some(g.at),
                    });
                    if g.status == ClaimStatus::Approved {
                        writes.payouts.push(PayoutInsert { claim_id: &g.claim_id, at: g.at + grace });
                    }
                }
                Verdict::ConditionNotMet => {
                    let unmet = g.unmet.as_deref().unwrap_or_default();
                    // One record per player and reward: the last refusal of the batch.
                    refusals.insert(
                        (&g.user_id, &g.reward_id),
                        RefusalRow {
                            id: crate::new_id(),
                            user_id: &g.user_id,
                            event_id: &g.event_id,
                            reward_id: &g.reward_id,
                            reason: format!("condition not met: {unmet}"),
                            reward: &g.reward,
                            at: g.at,
                        },
                    );
                }
                Verdict::Stale | Verdict::Replay | Verdict::Duplicate { .. } | Verdict::OutOfStock => {}
            }
            if let Some(key) = &g.key {
                let answer = match verdict {
                    Verdict::Granted { .. } => Some((201, g.body.clone())),
                    other => other
                        .refusal(g.unmet.as_deref().unwrap_or_default())
                        .map(|p| (i64::from(p.status.as_u16()), p.to_json())),
                };
                if let Some((status, body)) = answer {
                    writes.answers.push(KeyAnswer { user_id: &g.user_id, key, status, body });
                }
            }
        }
        let mut refusals: Vec<RefusalRow> = refusals.into_values().collect();
        refusals.sort_by(|a, b| (a.user_id, a.reward_id).cmp(&(b.user_id, b.reward_id)));
        writes.refusals = refusals;
        writes.taken = decided.taken.iter().map(|(id, n)| Taken { id, n: *n }).collect();
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let grant = Grant {
            claim_id: "c".into(),
            user_id: "u".into(),
            event_id: "e".into(),
            reward_id: "r".into(),
            at: 0,
            status: ClaimStatus::Paid,
            reward: "{}".into(),
            reward_version: 0,
            event_version: 0,
            unmet: None,
            key: None,
            body: "{}".into(),
        };
        (grant, oneshot::channel().0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_the_announced_grants_and_no_longer() {
        let (tx, mut rx) = mpsc::channel(8);
        let started = tokio::time::Instant::now();

        // Alone: written at once.
        let batch = gather(job(), &mut rx, &AtomicUsize::new(1)).await;
        assert_eq!((batch.len(), started.elapsed()), (1, Duration::ZERO));

        // Three announced, the third on its way: written when it arrives,
        // before the gathering time is up.
        tx.send(job()).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            late.send(job()).await.unwrap();
        });
        let started = tokio::time::Instant::now();
        let batch = gather(job(), &mut rx, &AtomicUsize::new(3)).await;
        assert_eq!(batch.len(), 3);
        assert!(started.elapsed() < GATHER);

        // Four announced, one never comes (refused before its grant, say): written after GATHER.
        tx.send(job()).await.unwrap();
        tx.send(job()).await.unwrap();
        let started = tokio::time::Instant::now();
        let batch = gather(job(), &mut rx, &AtomicUsize::new(4)).await;
        assert_eq!((batch.len(), started.elapsed()), (3, GATHER));
    }

    #[tokio::test]
    async fn an_announcement_withdraws_when_its_claim_stops_short() {
        let shard = Shard { queue: mpsc::channel(1).0, announced: Arc::new(AtomicUsize::new(0)) };
        let committer =
            Committer { shards: vec![shard.clone(); SHARDS], sold_out: Default::default(), faults: Default::default() };
        let announced = committer.announce("r");
        assert_eq!(shard.announced.load(Ordering::Acquire), 1);
        drop(announced);
        assert_eq!(shard.announced.load(Ordering::Acquire), 0);
    }
}
