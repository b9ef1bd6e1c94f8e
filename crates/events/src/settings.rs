//! The events service's settings (`[events]` in the config file, `REWARDS_EVENTS__*`).

use std::net::SocketAddr;
use std::path::Path;

use rewards_kit::store::{self, StoreOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite:<path>` or `postgres://...`; default `sqlite:<data_dir>/events.db`.
    pub database_url: Option<String>,
    /// Largest store connection pool.
    pub max_connections: u32,
    /// How long a request waits for a store connection before it is
    /// answered 503 (with `Retry-After`), in milliseconds.
    pub pool_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// The time zone of date-only event dates and of day counting, unless an
    /// event names its own (IANA name).
    pub time_zone: String,
    /// The game's inventory webhook; unset: the built-in ledger.
    pub payout_webhook_url: Option<String>,
    /// Attempts before a claim's payout is given up as `FAILED`.
    pub payout_max_attempts: u32,
    /// First retry delay in milliseconds (doubling, capped at 5 minutes).
    pub payout_backoff_ms: u64,
    /// How long one webhook call may take, in milliseconds.
    pub payout_timeout_ms: u64,
    /// How often the payout outbox is checked, in milliseconds.
    pub payout_poll_ms: u64,
    /// How long a claim may rely on a remembered event and reward (window,
    /// condition) before reading them again, in milliseconds; changes made
    /// through this process are seen at once. 0: read them for every claim.
    pub claim_cache_ms: u64,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::DEFAULT_PORT)),
            database_url: None,
            max_connections: StoreOptions::default().max_connections,
            pool_timeout_ms: store::DEFAULT_POOL_TIMEOUT_MS,
            body_limit: rewards_kit::http::DEFAULT_BODY_LIMIT,
            time_zone: "Asia/Seoul".to_owned(),
            payout_webhook_url: None,
            payout_max_attempts: 8,
            payout_backoff_ms: 500,
            payout_timeout_ms: 5_000,
            payout_poll_ms: 250,
            claim_cache_ms: 1_000,
        }
    }
}

impl EventsSettings {
    pub fn database_url(&self, data_dir: &Path) -> String {
        self.database_url.clone().unwrap_or_else(|| store::sqlite_url(data_dir, "events.db"))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.max_connections,
            acquire_timeout: std::time::Duration::from_millis(self.pool_timeout_ms),
        }
    }
}
