//! Group commit of grants.
//!
//! A grant's decisive writes (the claim in a free per-user slot, the stock
//! taken, the transition, the payout row, the idempotency answer) must commit
//! before the client hears 201. Committing each grant alone makes every claim
//! wait for its own disk flush — and on a hot reward, for every earlier
//! claim's flush too, since each holds the reward's row until it commits.
//!
//! Here one writer per shard of rewards gathers the grants of the claims in
//! flight — a claim announces itself when it starts, and the writer waits
//! for the announced ones to arrive, up to [`GATHER`], never for a batch size
//! that load may not reach — and decides them all in one transaction, in
//! order of arrival, against the rows it locks (the rewards; their events
//! share-locked):
//!
//! 1. the reward and its event are still the versions the claim was checked
//!    against (else [`Outcome::Stale`]: the claim is checked again);
//! 2. a free slot, the player holding fewer than `perUserLimit` live claims
//!    (else `DUPLICATE_CLAIM`);
//! 3. a unit of stock (else `OUT_OF_STOCK`);
//! 4. the claim inserted in its slot — a slot another writer took meanwhile
//!    is refused by the unique index, and the grant goes round again — the
//!    stock taken, the transition, the payout row and the idempotency answer
//!    written; one commit; then every waiter hears its outcome.
//!
//! On PostgreSQL the whole batch is one statement (one round trip, its own
//! transaction: [`postgres`]); on SQLite, in-process, a few statements in a
//! `BEGIN IMMEDIATE` transaction with the decisions made here ([`sqlite`]).
//! A reward always belongs to the same shard, so the writers of one process
//! never contend for a row. If a batch fails as a whole, its grants are
//! retried one by one, so one bad grant cannot fail the others.

mod postgres;
mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rewards_kit::store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::payout::{self, Handoff};

/// Most grants in one transaction.
const MAX_BATCH: usize = 512;
/// Writers (each a transaction at a time).
const SHARDS: usize = 2;
/// Longest a writer waits for announced grants before writing what it has.
const GATHER: Duration = Duration::from_millis(1);
/// How often a grant goes round again after losing its slot to another writer.
const MAX_ROUNDS: u32 = 4;

/// One grant to decide and write, with what the claim was checked against.
#[derive(Debug, Clone)]
pub struct Grant {
    pub claim_id: String,
    pub transition_id: String,
    pub user_id: String,
    pub event_id: String,
    pub reward_id: String,
    pub actor: String,
    /// When the claim was made (micros).
    pub at: i64,
    /// `PENDING` or `APPROVED`, as the checked reward says.
    pub status: &'static str,
    /// The reward as claimed: `{name, type, details, quantity}` as JSON.
    pub reward: String,
    /// The versions of the reward and of the event the claim was checked
    /// against; if either has changed since, the grant is [`Outcome::Stale`].
    pub reward_version: i64,
    pub event_version: i64,
    /// The caller's `Idempotency-Key`, and the 201 body stored with it.
    pub key: Option<(String, String)>,
}

/// What became of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    /// The reward or its event changed after the claim was checked (or the
    /// reward is gone): check the claim again.
    Stale,
    Duplicate {
        limit: i64,
    },
    OutOfStock,
}

/// A grant's fate inside one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Done(Outcome),
    /// Its slot went to another writer between our read and our insert.
    Again,
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
    /// Committed grants that pay out at once go to `handoff`.
    pub fn start(store: Store, handoff: Handoff) -> Self {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let (queue, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
            let shard = Shard { queue, announced: Arc::new(AtomicUsize::new(0)) };
            let writer = Writer {
                store: store.clone(),
                again: shard.queue.downgrade(),
                announced: shard.announced.clone(),
                handoff: handoff.clone(),
            };
            tokio::spawn(writer.run(rx));
            shards.push(shard);
        }
        Self { shards }
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
        // Until the writer has the grant, dropping this (the request gave up,
        // or the writer stopped) withdraws the announcement.
        queue.send((grant, 0, reply)).await.map_err(|_| "the grant writer stopped".to_owned())?;
        self.pending = false;
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

/// One shard's writer.
struct Writer {
    store: Store,
    /// Its own queue, for grants that go round again.
    again: mpsc::WeakSender<Job>,
    announced: Arc<AtomicUsize>,
    handoff: Handoff,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut batch = gather(first, &mut rx, &self.announced).await;
            let grants: Vec<&Grant> = batch.iter().map(|(g, _, _)| g).collect();
            match write(&self.store, &grants).await {
                Ok(decisions) => {
                    for (job, decision) in batch.into_iter().zip(decisions) {
                        self.settle(job, Ok(decision));
                    }
                }
                Err(err) if batch.len() == 1 => {
                    self.settle(batch.pop().expect("one job"), Err(err.to_string()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, size = batch.len(), "a grant batch failed; writing its grants one by one");
                    for job in batch {
                        let decision =
                            write(&self.store, &[&job.0]).await.map(|mut d| d.remove(0)).map_err(|e| e.to_string());
                        self.settle(job, decision);
                    }
                }
            }
        }
    }

    /// Answers a grant (handing a granted one's payout over), or sends it
    /// round again when it lost its slot.
    fn settle(&self, job: Job, decision: Result<Decision, String>) {
        let (grant, rounds, reply) = job;
        match decision {
            Ok(Decision::Done(outcome)) => {
                if outcome == Outcome::Granted && grant.status == "APPROVED" {
                    self.handoff.hand(grant.claim_id, grant.user_id, grant.reward);
                }
                answer(reply, Ok(outcome), &self.announced)
            }
            Ok(Decision::Again) if rounds + 1 < MAX_ROUNDS => {
                requeue(&self.again, (grant, rounds + 1, reply), &self.announced)
            }
            Ok(Decision::Again) => {
                answer(reply, Err("the claim kept losing its slot to another writer".to_owned()), &self.announced)
            }
            Err(err) => answer(reply, Err(err), &self.announced),
        }
    }
}

/// Decides and writes `grants` in one transaction; one decision per grant, in order.
async fn write(store: &Store, grants: &[&Grant]) -> Result<Vec<Decision>, sqlx::Error> {
    // The outbox row of a payout handed over in memory waits before the poll may take it.
    let grace = payout::grace_micros();
    match store {
        Store::Postgres(pool) => postgres::write(pool, grants, grace).await,
        Store::Sqlite(pool) => sqlite::write(pool, grants, grace).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let grant = Grant {
            claim_id: "c".into(),
            transition_id: "t".into(),
            user_id: "u".into(),
            event_id: "e".into(),
            reward_id: "r".into(),
            actor: "u".into(),
            at: 0,
            status: "APPROVED",
            reward: "{}".into(),
            reward_version: 0,
            event_version: 0,
            key: None,
        };
        (grant, 0, oneshot::channel().0)
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
        let committer = Committer { shards: vec![shard.clone(); SHARDS] };
        let announced = committer.announce("r");
        assert_eq!(shard.announced.load(Ordering::Acquire), 1);
        drop(announced);
        assert_eq!(shard.announced.load(Ordering::Acquire), 0);
    }
}
