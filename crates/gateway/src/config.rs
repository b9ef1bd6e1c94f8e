//! The gateway's settings (`[gateway]` in the config file, `REWARDS_GATEWAY__*`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Base URL of the auth service, served under `/auth-service`.
    pub auth_url: String,
    /// Base URL of the events service, served under `/event-service`.
    pub events_url: String,
    /// How long a backend may take to start answering, in milliseconds (then 504).
    pub timeout_ms: u64,
    /// Largest accepted request body, in bytes (then 413).
    pub body_limit: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::DEFAULT_PORT)),
            auth_url: "http://127.0.0.1:3001".to_owned(),
            events_url: "http://127.0.0.1:3002".to_owned(),
            timeout_ms: 10_000,
            body_limit: rewards_kit::http::DEFAULT_BODY_LIMIT,
        }
    }
}
