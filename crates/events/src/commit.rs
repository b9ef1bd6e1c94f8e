//! Group commit of grants.
//!
//! A grant's decisive writes (the claim in a free per-user slot, the guarded
//! stock decrement, the transition, the payout row, the idempotency answer)
//! must commit before the client hears 201. Committing each grant alone makes
//! every claim wait for its own disk flush — and on a hot reward, for every
//! earlier claim's flush too, since each holds the reward's row until it
//! commits. Here one writer per shard of rewards takes whatever grants are
//! queued when it is free (no waiting for a batch to fill), writes them all in
//! one transaction with the same statements and guards, commits once, and
//! answers each. A reward always belongs to the same shard, so shards never
//! contend for a row. If a batch fails as a whole, its grants are retried one
//! by one, so one bad grant cannot fail the others.

use rewards_kit::store::Store;
use rewards_kit::with_write_tx;
use tokio::sync::{mpsc, oneshot};

use crate::claims::{CLAIM_COLUMNS, ClaimRow};

/// Most grants in one transaction.
const MAX_BATCH: usize = 256;
/// Writers (each a transaction at a time).
const SHARDS: usize = 4;

/// One grant to write.
#[derive(Debug, Clone)]
pub struct Grant {
    pub row: ClaimRow,
    pub actor: String,
    pub per_user_limit: i64,
    /// Live claims the player held when the request was checked.
    pub live: i64,
    pub limited: bool,
    pub requires_approval: bool,
    pub key: Option<String>,
    /// The 201 answer, stored for the idempotency key.
    pub body: String,
}

/// Why a grant was refused inside the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Duplicate,
    OutOfStock,
}

type Outcome = Result<(), Refusal>;
type Job = (Grant, oneshot::Sender<Result<Outcome, String>>);

#[derive(Clone)]
pub struct Committer {
    shards: Vec<mpsc::Sender<Job>>,
}

impl Committer {
    /// Starts the writers; they stop when the last `Committer` is dropped.
    pub fn start(store: Store) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
                tokio::spawn(writer(store.clone(), rx));
                tx
            })
            .collect();
        Self { shards }
    }

    /// Writes `grant` with whatever else is queued; `Err` is a store failure.
    pub async fn grant(&self, grant: Grant) -> Result<Outcome, String> {
        let shard = shard_of(&grant.row.reward_id);
        let (reply, answer) = oneshot::channel();
        self.shards[shard].send((grant, reply)).await.map_err(|_| "the grant writer stopped".to_owned())?;
        answer.await.map_err(|_| "the grant writer dropped the grant".to_owned())?
    }
}

fn shard_of(reward_id: &str) -> usize {
    // FNV-1a: stable across runs, cheap.
    let hash =
        reward_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % SHARDS as u64) as usize
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let grants: Vec<Grant> = batch.iter().map(|(g, _)| g.clone()).collect();
        match write(&store, &grants).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(err) if batch.len() == 1 => {
                let (_, reply) = batch.pop().expect("one job");
                let _ = reply.send(Err(err.to_string()));
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "a grant batch failed; writing its grants one by one");
                for (grant, reply) in batch {
                    let outcome = write(&store, std::slice::from_ref(&grant)).await.map(|mut o| o.remove(0));
                    let _ = reply.send(outcome.map_err(|e| e.to_string()));
                }
            }
        }
    }
}

/// All `grants` in one transaction, each with the same guards as alone.
async fn write(store: &Store, grants: &[Grant]) -> Result<Vec<Outcome>, sqlx::Error> {
    let insert = format!(
        "INSERT INTO reward_claims ({CLAIM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, NULL, $8) \
         ON CONFLICT DO NOTHING"
    );
    let take_stock = "UPDATE rewards SET remaining = remaining - 1 WHERE id = $1 AND remaining > 0";
    let undo = "DELETE FROM reward_claims WHERE id = $1";
    let payout = "INSERT INTO payouts (claim_id, next_attempt_at) VALUES ($1, $2)";
    let remember =
        "UPDATE idempotency_keys SET response_status = 201, response_body = $1 WHERE user_id = $2 AND key = $3";
    let outcomes = with_write_tx!(store, |tx| {
        let mut outcomes = Vec::with_capacity(grants.len());
        for g in grants {
            let row = &g.row;
            let outcome: Outcome = 'grant: {
                // The slots after the ones seen taken first, then any freed since.
                let limit = g.per_user_limit;
                let mut slotted = false;
                for slot in (g.live + 1..=limit).chain(1..=g.live.min(limit)) {
                    let inserted = sqlx::query(&insert)
                        .bind(&row.id)
                        .bind(&row.user_id)
                        .bind(&row.event_id)
                        .bind(&row.reward_id)
                        .bind(slot)
                        .bind(&row.status)
                        .bind(&row.reward)
                        .bind(row.created_at)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if inserted == 1 {
                        slotted = true;
                        break;
                    }
                }
                if !slotted {
                    break 'grant Err(Refusal::Duplicate);
                }
                if g.limited
                    && sqlx::query(take_stock).bind(&row.reward_id).execute(&mut *tx).await?.rows_affected() == 0
                {
                    sqlx::query(undo).bind(&row.id).execute(&mut *tx).await?;
                    break 'grant Err(Refusal::OutOfStock);
                }
                crate::claims::record_transition!(
                    tx,
                    &row.id,
                    None::<&str>,
                    &row.status,
                    &g.actor,
                    None::<&str>,
                    row.created_at
                );
                if !g.requires_approval {
                    sqlx::query(payout).bind(&row.id).bind(row.created_at).execute(&mut *tx).await?;
                }
                if let Some(key) = &g.key {
                    sqlx::query(remember).bind(&g.body).bind(&row.user_id).bind(key).execute(&mut *tx).await?;
                }
                Ok(())
            };
            outcomes.push(outcome);
        }
        outcomes
    });
    Ok(outcomes)
}
