//! The gateway's settings (`[gateway]` in the config file, `REWARDS_GATEWAY__*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Serving threads, each a single-threaded runtime with its own listening
    /// socket (`SO_REUSEPORT`); 0 means one per CPU.
    pub threads: usize,
    /// A registry file (TOML); default: the built-in registry, which routes
    /// `/auth-service` to `auth_url` and `/event-service` to `events_url`.
    pub registry_file: Option<PathBuf>,
    /// The auth service's instance in the built-in registry.
    pub auth_url: String,
    /// The events service's instance in the built-in registry.
    pub events_url: String,
    /// Where the public keys are; default `<first auth-service instance>/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// The `iss` access tokens must carry.
    pub issuer: String,
    /// The `aud` access tokens must carry.
    pub audience: String,
    /// Verified tokens remembered (so a signature is checked once per token).
    pub token_cache_size: usize,
    /// How long a backend may take to start answering, in milliseconds (then 504).
    pub timeout_ms: u64,
    /// How long a client may take to send a request's head, how long a
    /// keep-alive connection may sit idle between requests, and how long an
    /// answer may wait for the client to read it (then the connection is
    /// closed; 0: no limit).
    pub header_timeout_ms: u64,
    /// Largest accepted request body, in bytes (then 413).
    pub body_limit: usize,
    /// How often every instance's `/health` is probed, in milliseconds.
    pub health_interval_ms: u64,
    /// Requests per second per client address (0: no limit).
    pub rate_per_address: u32,
    /// Burst allowed per client address.
    pub burst_per_address: u32,
    /// Requests per second per signed-in user (0: no limit).
    pub rate_per_user: u32,
    /// Burst allowed per signed-in user.
    pub burst_per_user: u32,
    /// Networks allowed to read `/metrics`.
    pub metrics_allow: Vec<IpNet>,
}

impl GatewaySettings {
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::DEFAULT_PORT)),
            threads: 0,
            registry_file: None,
            auth_url: "http://127.0.0.1:3001".to_owned(),
            events_url: "http://127.0.0.1:3002".to_owned(),
            jwks_url: None,
            issuer: "rewards-auth".to_owned(),
            audience: "rewards".to_owned(),
            token_cache_size: 100_000,
            timeout_ms: 10_000,
            header_timeout_ms: 30_000,
            body_limit: rewards_kit::http::DEFAULT_BODY_LIMIT,
            health_interval_ms: 2_000,
            rate_per_address: 500,
            burst_per_address: 1_000,
            rate_per_user: 50,
            burst_per_user: 100,
            metrics_allow: ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
                .iter()
                .map(|n| n.parse().expect("valid default network"))
                .collect(),
        }
    }
}
