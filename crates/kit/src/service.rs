//! What the auth and events services share in shape: a store of their own,
//! opened and migrated at start, closed after the last request has been
//! served, and the operational routes that report on it.

use axum::Router;
use tokio::net::TcpListener;

use crate::server::{self, Shutdown};
use crate::store::{self, Migrations, Store, StoreOptions};

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
