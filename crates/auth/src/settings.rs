//! The auth service's settings (`[auth]` in the config file, `REWARDS_AUTH__*`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rewards_kit::config::Secret;
use rewards_kit::store::{self, StoreOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite:<path>` or `postgres://...`; default `sqlite:<data_dir>/auth.db`.
    pub database_url: Option<String>,
    /// Largest store connection pool.
    pub max_connections: u32,
    /// How long a request waits for a store connection before it is
    /// answered 503 (with `Retry-After`), in milliseconds.
    pub pool_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,

    /// Access token lifetime in seconds.
    pub access_token_ttl_secs: u64,
    /// Refresh token lifetime in seconds (each rotation starts a new one).
    pub refresh_token_ttl_secs: u64,
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// How long a new signing key is published before it signs, in seconds, so
    /// every verifier has fetched it before the first token it signs arrives.
    pub key_publish_lead_secs: u64,
    /// How often the service rereads signing keys from its store (a rotation
    /// made by `rewards admin rotate-keys` is picked up within this time).
    pub key_reload_secs: u64,

    /// Argon2id memory cost in KiB (OWASP: 19456).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations (OWASP: 2).
    pub argon2_iterations: u32,
    /// Hashes computed at once; 0 means one per CPU.
    pub hash_concurrency: usize,
    /// Logins/signups allowed to wait for a hashing slot before the service
    /// answers 503 with `Retry-After` instead of queueing without limit.
    pub hash_queue: usize,

    /// Failed logins of one username from one client address within the
    /// window before 429 there (from all addresses together: ten times as
    /// many, see `throttle::SPREAD`).
    pub login_failures_per_user: u32,
    /// Failed logins per client address, whatever the usernames, within the
    /// window before 429 (looser: many players may share an address).
    pub login_failures_per_address: u32,
    /// The failed-login window, in seconds.
    pub login_failure_window_secs: u64,
    /// Sign-ups per client address within `signup_window_secs` (0: no limit).
    pub signups_per_address: u32,
    /// Sign-ups naming one referrer within `signup_window_secs` (0: no limit).
    pub referrals_per_referrer: u32,
    /// The sign-up window, in seconds.
    pub signup_window_secs: u64,

    /// Where LOGIN and SIGNUP activities are delivered (the events service).
    pub events_url: String,
    /// How often the outbox is checked for activities to deliver, in milliseconds.
    pub outbox_poll_ms: u64,

    /// The bootstrap admin's password (`REWARDS_ADMIN_PASSWORD` works too);
    /// when unset on first start, one is generated and printed once.
    pub admin_password: Secret,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::DEFAULT_PORT)),
            database_url: None,
            max_connections: StoreOptions::default().max_connections,
            pool_timeout_ms: store::DEFAULT_POOL_TIMEOUT_MS,
            body_limit: rewards_kit::http::DEFAULT_BODY_LIMIT,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 14 * 24 * 3600,
            issuer: "rewards-auth".to_owned(),
            audience: "rewards".to_owned(),
            key_publish_lead_secs: 300,
            key_reload_secs: 10,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            hash_concurrency: 0,
            hash_queue: 64,
            login_failures_per_user: 5,
            login_failures_per_address: 100,
            login_failure_window_secs: 15 * 60,
            signups_per_address: 20,
            referrals_per_referrer: 30,
            signup_window_secs: 60 * 60,
            events_url: "http://127.0.0.1:3002".to_owned(),
            outbox_poll_ms: 250,
            admin_password: Secret::default(),
        }
    }
}

impl AuthSettings {
    /// Cheap password hashing and short windows, for tests only.
    pub fn for_tests() -> Self {
        // No sign-up limits: tests make many accounts from one address (the
        // limits' own tests set them).
        Self {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            login_failure_window_secs: 60,
            signups_per_address: 0,
            referrals_per_referrer: 0,
            ..Self::default()
        }
    }

    pub fn database_url(&self, data_dir: &Path) -> String {
        self.database_url.clone().unwrap_or_else(|| store::sqlite_url(data_dir, "auth.db"))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.max_connections,
            acquire_timeout: Duration::from_millis(self.pool_timeout_ms),
        }
    }

    pub fn access_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.access_token_ttl_secs as i64)
    }

    pub fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.refresh_token_ttl_secs as i64)
    }

    pub fn failure_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.login_failure_window_secs as i64)
    }

    pub fn key_reload(&self) -> Duration {
        Duration::from_secs(self.key_reload_secs)
    }
}
