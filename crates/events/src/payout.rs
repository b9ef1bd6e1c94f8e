//! Payout to an external sink: grants are delivered from the `payouts`
//! outbox, written in the claim's transaction. A claim is `PAID` only once
//! the sink confirmed.
//!
//! The built-in ledger needs none of this: it is this store, so a grant (or
//! an approval) it pays is written `PAID` in its own transaction, and the
//! ledger is the set of those claims. The outbox is for the game's inventory
//! webhook, called with the claim id as `Idempotency-Key` so a retried call
//! grants once. (Rows left in the outbox while no webhook is configured are
//! marked paid by the dispatcher.) Failures are retried with
//! exponential backoff; after `payout_max_attempts` the claim is `FAILED`
//! until an operator retries it. A restart resumes whatever is due.
//!
//! A grant's transaction also hands its payout to the dispatcher in memory
//! once it has committed ([`Handoff`]), so a new grant is delivered at once
//! without the dispatcher looking for it; its outbox row waits
//! [`HANDOFF_GRACE`] before the poll may take it, and is what survives a
//! crash. Should both deliver a claim, the sink sees the same
//! `Idempotency-Key` twice and the claim moves to `PAID` once.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use rewards_kit::server::Shutdown;
use rewards_kit::store::Store;
use rewards_kit::{with_pool, with_write_tx};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::batch::{self, TransitionRow};
use crate::claims::LEDGER_ACTOR;
use crate::domain::ClaimStatus;

/// Most payouts delivered in one go.
const BATCH: usize = 500;
/// Most webhook calls in flight.
const WEBHOOK_CALLS: usize = 64;

/// A claim to deliver.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    claim_id: String,
    user_id: String,
    /// The reward as claimed (JSON).
    reward: String,
    attempts: i64,
}

/// How long a new payout row waits before the poll may take it: the
/// in-memory handoff delivers it well before.
const HANDOFF_GRACE: Duration = Duration::from_secs(2);

/// When the poll may first take a payout handed over at `now` (micros).
pub fn first_poll_at(now: i64) -> i64 {
    now + grace_micros()
}

/// [`HANDOFF_GRACE`] in microseconds, as the outbox counts time.
pub fn grace_micros() -> i64 {
    HANDOFF_GRACE.as_micros() as i64
}
/// Payouts waiting in memory; past that they wait for the poll.
const HANDOFF_QUEUE: usize = 65_536;

/// Hands newly due payouts to the dispatcher, after their transaction committed.
#[derive(Debug, Clone)]
pub struct Handoff(mpsc::Sender<(Instant, Due)>);

/// The dispatcher's end of the [`Handoff`].
pub type Handed = mpsc::Receiver<(Instant, Due)>;

impl Handoff {
    pub fn channel() -> (Self, Handed) {
        let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
        (Self(tx), rx)
    }

    /// A claim that has just become due, first attempt. Never waits: with
    /// the queue full (or no dispatcher), the poll finds it.
    pub fn hand(&self, claim_id: String, user_id: String, reward: String) {
        let due = Due { claim_id, user_id, reward, attempts: 0 };
        let _ = self.0.try_send((Instant::now(), due));
    }
}

pub struct Dispatcher {
    state: AppState,
    client: reqwest::Client,
    handed: Option<Handed>,
}

/// What was handed over and is still the handoff's to deliver (up to
/// [`BATCH`]), waiting for the first; never, when there is no handoff. A
/// payout that waited in memory for half the grace is left to the poll, well
/// before the poll may take it (its row counts the grace from the claim's
/// start, a little before it was handed over).
async fn next_handed(handed: &mut Option<Handed>) -> Vec<Due> {
    let Some(rx) = handed else { return std::future::pending().await };
    let Some(first) = rx.recv().await else { return std::future::pending().await };
    let mut due = vec![first];
    while due.len() < BATCH {
        match rx.try_recv() {
            Ok(next) => due.push(next),
            Err(_) => break,
        }
    }
    due.into_iter().filter(|(at, _)| at.elapsed() < HANDOFF_GRACE / 2).map(|(_, d)| d).collect()
}

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

impl Dispatcher {
    /// The service's dispatcher; the first one made takes the in-memory
    /// handoff, any other only polls.
    pub fn new(state: AppState) -> Self {
        let timeout = Duration::from_millis(state.settings.payout_timeout_ms.max(1));
        let client = reqwest::Client::builder().timeout(timeout).build().expect("an HTTP client");
        let handed = state.handed.lock().expect("handoff").take();
        Self { state, client, handed }
    }

    pub async fn run(mut self, shutdown: Shutdown) {
        let poll = Duration::from_millis(self.state.settings.payout_poll_ms.max(10));
        match &self.state.settings.payout_webhook_url {
            Some(url) => tracing::info!(%url, "paying out through the inventory webhook"),
            None => tracing::info!("paying out into the built-in ledger"),
        }
        let mut handed = self.handed.take();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                due = next_handed(&mut handed) => {
                    if let Err(err) = self.deliver(due).await {
                        tracing::warn!(error = %err, "payout: could not update the outbox");
                    }
                }
                _ = tick.tick() => self.poll_until_done().await,
            }
        }
    }

    /// Everything the outbox says is due, batch after batch.
    async fn poll_until_done(&self) {
        loop {
            match self.deliver_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "payout: could not read or update the outbox");
                    return;
                }
            }
        }
    }

    /// Delivers what is due, up to [`BATCH`] at a time; returns how many were tried.
    async fn deliver_due(&self) -> Result<usize, sqlx::Error> {
        // The due payouts first (their partial index), then each one's claim
        // by its key: no plan can scan the claims.
        let sql = match self.state.store() {
            Store::Postgres(_) => {
                "SELECT p.claim_id, c.user_id, c.reward, p.attempts FROM \
                 (SELECT claim_id, attempts, next_attempt_at FROM payouts \
                  WHERE delivered_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2) p \
                 CROSS JOIN LATERAL (SELECT user_id, reward, status FROM reward_claims WHERE id = p.claim_id) c \
                 WHERE c.status = 'APPROVED' ORDER BY p.next_attempt_at"
            }
            Store::Sqlite(_) => {
                "SELECT p.claim_id, c.user_id, c.reward, p.attempts FROM payouts p \
                 JOIN reward_claims c ON c.id = p.claim_id \
                 WHERE p.delivered_at IS NULL AND p.next_attempt_at <= $1 AND c.status = 'APPROVED' \
                 ORDER BY p.next_attempt_at LIMIT $2"
            }
        };
        let due: Vec<Due> = with_pool!(self.state.store(), |pool| {
            sqlx::query_as(sql).bind(now_us()).bind(BATCH as i64).fetch_all(pool).await
        })?;
        let n = due.len();
        self.deliver(due).await?;
        Ok(n)
    }

    /// Delivers `due` to the sink; the confirmed ones are PAID in one transaction.
    async fn deliver(&self, due: Vec<Due>) -> Result<(), sqlx::Error> {
        let delivered = match &self.state.settings.payout_webhook_url {
            // The built-in ledger is this store: writing it is the delivery.
            None => due,
            Some(url) => {
                // Concurrently, a bounded number at a time: a slow call must
                // not hold up the others.
                let calls = futures_util::stream::iter(due.into_iter().map(|d| async move {
                    let outcome = self.call_webhook(url, &d).await;
                    (d, outcome)
                }))
                .buffer_unordered(WEBHOOK_CALLS);
                let results: Vec<(Due, Result<(), String>)> = calls.collect().await;
                let mut delivered = Vec::with_capacity(results.len());
                for (due, outcome) in results {
                    match outcome {
                        Ok(()) => delivered.push(due),
                        Err(why) => self.failed(&due, &why).await?,
                    }
                }
                delivered
            }
        };
        if !delivered.is_empty() {
            self.paid(&delivered).await?;
        }
        Ok(())
    }

    async fn call_webhook(&self, url: &str, due: &Due) -> Result<(), String> {
        let body = json!({
            "claimId": due.claim_id,
            "userId": due.user_id,
            "reward": serde_json::from_str::<Value>(&due.reward).unwrap_or(Value::Null),
        });
        let response = self
            .client
            .post(url)
            .header("Idempotency-Key", &due.claim_id)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() { Ok(()) } else { Err(format!("the sink answered {}", response.status())) }
    }

    /// The sink confirmed: the claims are PAID, in one transaction.
    async fn paid(&self, delivered: &[Due]) -> Result<(), sqlx::Error> {
        let store = self.state.store();
        let at = rewards_kit::clock::to_micros(self.state.clock.now());
        let actor = if self.state.settings.payout_webhook_url.is_none() { LEDGER_ACTOR } else { "payout" };
        let ids = batch::Ids::of(delivered.iter().map(|d| d.claim_id.as_str()));
        let claims = format!(
            "UPDATE reward_claims SET status = 'PAID', processed_at = $1, updated_at = $1 \
             WHERE id {} AND status = 'APPROVED' RETURNING id",
            batch::in_list(store.kind(), 2)
        );
        // Delivered: out of the outbox (the PAID transition records when).
        let payouts = format!("DELETE FROM payouts WHERE claim_id {}", batch::in_list(store.kind(), 1));
        with_write_tx!(store, |tx| {
            let moved: Vec<String> = sqlx::query_scalar(&claims).bind(at).bind(&ids).fetch_all(&mut *tx).await?;
            sqlx::query(&payouts).bind(&ids).execute(&mut *tx).await?;
            if !moved.is_empty() {
                let transitions: Vec<TransitionRow> = moved
                    .iter()
                    .map(|id| TransitionRow {
                        id: crate::new_id(),
                        claim_id: id,
                        from_status: Some(ClaimStatus::Approved.as_str()),
                        to_status: ClaimStatus::Paid.as_str(),
                        actor_id: actor,
                        reason: None,
                        at,
                    })
                    .collect();
                sqlx::query(batch::insert_transitions(store.kind()))
                    .bind(batch::json(&transitions))
                    .execute(&mut *tx)
                    .await?;
            }
        });
        tracing::debug!(claims = delivered.len(), "paid");
        Ok(())
    }

    /// A failed attempt: due again after a backoff, or FAILED at the limit.
    async fn failed(&self, due: &Due, why: &str) -> Result<(), sqlx::Error> {
        let attempts = due.attempts + 1;
        let at = rewards_kit::clock::to_micros(self.state.clock.now());
        if attempts >= i64::from(self.state.settings.payout_max_attempts) {
            let claim = "UPDATE reward_claims SET status = 'FAILED', reason = $1, processed_at = $2, updated_at = $2 \
                         WHERE id = $3 AND status = 'APPROVED'";
            let payout = "DELETE FROM payouts WHERE claim_id = $1";
            let reason = format!("payout failed after {attempts} attempts: {why}");
            with_write_tx!(self.state.store(), |tx| {
                let moved = sqlx::query(claim)
                    .bind(&reason)
                    .bind(at)
                    .bind(&due.claim_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(payout).bind(&due.claim_id).execute(&mut *tx).await?;
                if moved == 1 {
                    let failed = TransitionRow {
                        id: crate::new_id(),
                        claim_id: &due.claim_id,
                        from_status: Some(ClaimStatus::Approved.as_str()),
                        to_status: ClaimStatus::Failed.as_str(),
                        actor_id: "payout",
                        reason: Some(&reason),
                        at,
                    };
                    let insert = batch::insert_transitions(self.state.store().kind());
                    sqlx::query(insert).bind(batch::json(&[failed])).execute(&mut *tx).await?;
                }
            });
            tracing::warn!(claim_id = %due.claim_id, attempts, error = why, "payout failed; the claim is FAILED");
        } else {
            let base = self.state.settings.payout_backoff_ms.max(1);
            let delay = base.saturating_mul(1 << attempts.clamp(0, 16) as u64).min(300_000);
            let sql = "UPDATE payouts SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE claim_id = $4";
            with_pool!(self.state.store(), |pool| {
                sqlx::query(sql)
                    .bind(attempts)
                    .bind(now_us() + (delay as i64) * 1000)
                    .bind(why)
                    .bind(&due.claim_id)
                    .execute(pool)
                    .await
                    .map(drop)
            })?;
            tracing::debug!(claim_id = %due.claim_id, attempts, error = why, "payout attempt failed; will retry");
        }
        Ok(())
    }
}
