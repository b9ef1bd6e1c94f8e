//! The events service: events, rewards, claims and the activity ledger.
//!
//! The service owns its store (SQLite or PostgreSQL, migrations for both under
//! `migrations/`) and trusts a caller's identity only through the gateway's
//! proof, verified by the kit's layer stack.

pub mod rules;

use axum::Router;
use rewards_kit::identity::IdentityKey;
use rewards_kit::store::{Migrations, Store, StoreOptions};
use sqlx::migrate::Migrator;

/// The service's name in logs and readiness reports.
pub const NAME: &str = "events";

/// The service's default port.
pub const DEFAULT_PORT: u16 = 3002;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// This service's schema, for both engines.
pub static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };

/// A running service's shared state.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
}

/// Opens (and migrates) the store at `url`.
pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<AppState> {
    let store = rewards_kit::service::open_store(NAME, url, options, &MIGRATIONS).await?;
    Ok(AppState { store })
}

/// The service's routes inside the kit's layer stack.
pub fn router(state: AppState, key: IdentityKey, body_limit: usize) -> Router {
    let routes = rewards_kit::service::ops_routes(state.store.clone());
    let routes = rewards_kit::rules::enforced(routes, rules::route_rules());
    rewards_kit::http::service_stack(NAME, routes, key, body_limit)
}
