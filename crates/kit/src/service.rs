//! What the auth and events services share in shape: a listen address and a
//! store of their own, opened and migrated at start, closed after the last
//! request has been served.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::server::{self, Shutdown};
use crate::store::{self, Migrations, Store, StoreOptions};

/// The settings every store-backed service has (`[auth]`, `[events]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
// No `serde(default)`: figment always supplies the full default tree first.
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite:<path>` or `postgres://...`; default: `<data_dir>/<service>.db`.
    pub database_url: Option<String>,
    /// Largest store connection pool.
    pub max_connections: u32,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
}

impl ServiceSettings {
    pub fn with_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            database_url: None,
            max_connections: StoreOptions::default().max_connections,
            body_limit: crate::http::DEFAULT_BODY_LIMIT,
        }
    }

    /// The configured store URL, or the service's SQLite file in `data_dir`.
    pub fn database_url(&self, data_dir: &Path, service: &str) -> String {
        self.database_url.clone().unwrap_or_else(|| store::sqlite_url(data_dir, &format!("{service}.db")))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions { max_connections: self.max_connections, ..StoreOptions::default() }
    }
}

/// Opens a service's store, migrates it and says so in the log.
pub async fn open_store(
    service: &str,
    url: &str,
    options: &StoreOptions,
    migrations: &Migrations,
) -> anyhow::Result<Store> {
    let (store, info) = Store::open_and_migrate(url, options, migrations).await?;
    tracing::info!(
        service,
        store = %store::redact_url(url),
        kind = store.kind().as_str(),
        schema_version = info.schema_version,
        created_at = %info.created_at,
        "{}",
        if info.newly_created { "store created" } else { "store opened" }
    );
    Ok(store)
}

/// Serves a store-backed service until shutdown, then closes its store.
pub async fn run(
    service: &'static str,
    listener: TcpListener,
    router: Router,
    store: Store,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let result = server::serve(service, listener, router, shutdown).await;
    store.close().await;
    tracing::info!(service, "store closed");
    result
}

/// `/health` and `/ready` (the store answers) for a store-backed service.
pub fn ops_routes(store: Store) -> Router {
    use axum::routing::get;
    Router::new().route("/health", get(crate::health::health)).route(
        "/ready",
        get(move || {
            let store = store.clone();
            async move { crate::health::Readiness::default().with("store", store.check().await) }
        }),
    )
}
