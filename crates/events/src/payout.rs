//! Payout: grants are delivered from the `payouts` outbox, written in the
//! claim's transaction. A claim is `PAID` only once the sink confirmed.
//!
//! The sink is the built-in ledger (`ledger_entries`, one row per claim) or
//! the game's inventory webhook, called with the claim id as
//! `Idempotency-Key` so a retried call grants once. Failures are retried with
//! exponential backoff; after `payout_max_attempts` the claim is `FAILED`
//! until an operator retries it. A restart resumes whatever is due.

use std::time::Duration;

use chrono::Utc;
use rewards_kit::server::Shutdown;
use rewards_kit::{with_pool, with_write_tx};
use serde_json::{Value, json};

use crate::AppState;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Due {
    claim_id: String,
    user_id: String,
    reward: String,
    attempts: i64,
}

pub struct Dispatcher {
    state: AppState,
    client: reqwest::Client,
}

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

impl Dispatcher {
    pub fn new(state: AppState) -> Self {
        let timeout = Duration::from_millis(state.settings.payout_timeout_ms.max(1));
        let client = reqwest::Client::builder().timeout(timeout).build().expect("an HTTP client");
        Self { state, client }
    }

    pub async fn run(self, shutdown: Shutdown) {
        let poll = Duration::from_millis(self.state.settings.payout_poll_ms.max(10));
        match &self.state.settings.payout_webhook_url {
            Some(url) => tracing::info!(%url, "paying out through the inventory webhook"),
            None => tracing::info!("paying out into the built-in ledger"),
        }
        loop {
            let busy = match self.deliver_due().await {
                Ok(n) => n > 0,
                Err(err) => {
                    tracing::warn!(error = %err, "payout: could not read or update the outbox");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Delivers what is due (concurrently, up to 32 at a time); returns how many were tried.
    pub async fn deliver_due(&self) -> Result<usize, sqlx::Error> {
        let sql = "SELECT p.claim_id, c.user_id, c.reward, p.attempts FROM payouts p \
                   JOIN reward_claims c ON c.id = p.claim_id \
                   WHERE p.delivered_at IS NULL AND p.next_attempt_at <= $1 AND c.status = 'APPROVED' \
                   ORDER BY p.next_attempt_at LIMIT 32";
        let due: Vec<Due> =
            with_pool!(self.state.store(), |pool| sqlx::query_as(sql).bind(now_us()).fetch_all(pool).await)?;
        let n = due.len();
        // All together: a slow sink call must not hold up the others.
        let results = futures_util::future::join_all(due.into_iter().map(|d| self.deliver(d))).await;
        for result in results {
            result?;
        }
        Ok(n)
    }

    async fn deliver(&self, due: Due) -> Result<(), sqlx::Error> {
        let outcome = match &self.state.settings.payout_webhook_url {
            None => Ok(()),
            Some(url) => self.call_webhook(url, &due).await,
        };
        match outcome {
            Ok(()) => self.paid(&due).await,
            Err(why) => self.failed(&due, &why).await,
        }
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

    /// The sink confirmed: the claim is PAID (and, with the built-in sink, the
    /// ledger has its entry), in one transaction.
    async fn paid(&self, due: &Due) -> Result<(), sqlx::Error> {
        let builtin = self.state.settings.payout_webhook_url.is_none();
        let reward: Value = serde_json::from_str(&due.reward).unwrap_or(Value::Null);
        let at = rewards_kit::clock::to_micros(self.state.clock.now());
        let ledger = "INSERT INTO ledger_entries (claim_id, user_id, type, details, quantity, created_at) \
                      VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
        let claim = "UPDATE reward_claims SET status = 'PAID', processed_at = $1, updated_at = $1 \
                     WHERE id = $2 AND status = 'APPROVED'";
        let payout =
            "UPDATE payouts SET delivered_at = $1, attempts = attempts + 1, last_error = NULL WHERE claim_id = $2";
        with_write_tx!(self.state.store(), |tx| {
            if builtin {
                sqlx::query(ledger)
                    .bind(&due.claim_id)
                    .bind(&due.user_id)
                    .bind(reward["type"].as_str().unwrap_or("POINT"))
                    .bind(reward["details"].to_string())
                    .bind(reward["quantity"].as_i64().unwrap_or(1))
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            let moved = sqlx::query(claim).bind(at).bind(&due.claim_id).execute(&mut *tx).await?.rows_affected();
            sqlx::query(payout).bind(at).bind(&due.claim_id).execute(&mut *tx).await?;
            if moved == 1 {
                crate::claims::record_transition!(
                    tx,
                    &due.claim_id,
                    Some("APPROVED"),
                    "PAID",
                    "payout",
                    None::<&str>,
                    at
                );
            }
        });
        tracing::info!(claim_id = %due.claim_id, "paid");
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
                    crate::claims::record_transition!(
                        tx,
                        &due.claim_id,
                        Some("APPROVED"),
                        "FAILED",
                        "payout",
                        Some(&reason),
                        at
                    );
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
