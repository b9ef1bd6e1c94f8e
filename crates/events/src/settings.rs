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
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// The time zone of date-only event dates and of day counting, unless an
    /// event names its own (IANA name).
    pub time_zone: String,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::DEFAULT_PORT)),
            database_url: None,
            max_connections: StoreOptions::default().max_connections,
            body_limit: rewards_kit::http::DEFAULT_BODY_LIMIT,
            time_zone: "Asia/Seoul".to_owned(),
        }
    }
}

impl EventsSettings {
    pub fn database_url(&self, data_dir: &Path) -> String {
        self.database_url.clone().unwrap_or_else(|| store::sqlite_url(data_dir, "events.db"))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions { max_connections: self.max_connections, ..StoreOptions::default() }
    }
}
