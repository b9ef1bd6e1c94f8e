//! Delivers the outbox's activities to the events service.
//!
//! The outbox row is written in the same transaction as what it reports (a
//! session, a new user), so an activity exists exactly when its fact does.
//! This dispatcher sends due rows in batches to the events service's
//! `POST /activities`, as the internal `auth` service; the events service
//! records each id once, so a batch resent after a lost answer counts once.
//! Failures are retried with exponential backoff (capped), for as long as it
//! takes: the events service down or restarting loses nothing.

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use rewards_kit::identity::{IDENTITY_HEADER, Identity, IdentityKey};
use rewards_kit::server::Shutdown;
use serde_json::{Value, json};

use crate::store::{AuthStore, OutboxRow};

const BATCH: i64 = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Dispatcher {
    db: AuthStore,
    key: IdentityKey,
    endpoint: String,
    client: reqwest::Client,
    poll: Duration,
}

impl Dispatcher {
    pub fn new(db: AuthStore, key: IdentityKey, events_url: &str, poll: Duration) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
        Self { db, key, endpoint: format!("{}/activities", events_url.trim_end_matches('/')), client, poll }
    }

    /// Delivers until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(endpoint = %self.endpoint, "delivering LOGIN and SIGNUP activities");
        loop {
            let delivered = match self.deliver_due().await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox: could not read or update the outbox");
                    0
                }
            };
            if delivered as i64 == BATCH {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Sends one batch of due rows; returns how many were delivered.
    pub async fn deliver_due(&self) -> Result<usize, sqlx::Error> {
        let rows = self.db.due_outbox(Utc::now().timestamp_micros(), BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        match self.send(&rows).await {
            Ok(()) => {
                let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
                self.db.outbox_delivered(&ids, Utc::now().timestamp_micros()).await?;
                tracing::debug!(count = ids.len(), "outbox: delivered");
                Ok(ids.len())
            }
            Err(why) => {
                for row in &rows {
                    let retry_at = Utc::now() + backoff(row.attempts);
                    self.db.outbox_failed(&row.id, retry_at.timestamp_micros(), &why).await?;
                }
                tracing::warn!(count = rows.len(), error = %why, "outbox: delivery failed; will retry");
                Ok(0)
            }
        }
    }

    async fn send(&self, rows: &[OutboxRow]) -> Result<(), String> {
        let activities: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "id": row.id,
                    "userId": row.user_id,
                    "type": row.kind,
                    "occurredAt": rewards_kit::clock::from_micros(row.occurred_at),
                    "attributes": serde_json::from_str::<Value>(&row.attributes).unwrap_or_else(|_| json!({})),
                })
            })
            .collect();
        let proof = self.key.sign(&http::Method::POST, "/activities", Identity::service("auth"));
        let response = self
            .client
            .post(&self.endpoint)
            .header(IDENTITY_HEADER, proof)
            .json(&json!({ "activities": activities }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::OK => Ok(()),
            status => Err(format!("events answered {status}: {}", response.text().await.unwrap_or_default())),
        }
    }
}

/// 0.5 s, 1 s, 2 s, ... up to a minute.
fn backoff(attempts: i64) -> chrono::Duration {
    let ms = 500u64.saturating_mul(1 << attempts.clamp(0, 16));
    chrono::Duration::from_std(Duration::from_millis(ms).min(MAX_BACKOFF)).unwrap_or(chrono::Duration::seconds(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), chrono::Duration::milliseconds(500));
        assert_eq!(backoff(3), chrono::Duration::seconds(4));
        assert_eq!(backoff(40), chrono::Duration::seconds(60));
    }
}
