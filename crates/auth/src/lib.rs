//! The auth service: accounts, roles, tokens and sessions.
//!
//! It owns its store (SQLite or PostgreSQL, migrations for both under
//! `migrations/`), signs access tokens with Ed25519 keys kept in that store,
//! rotates opaque refresh tokens, and trusts a caller's identity only through
//! the gateway's proof, verified by the kit's layer stack. Its route rules
//! ([`rules::route_rules`]) are enforced here and by the gateway.

pub mod keys;
pub mod outbox;
pub mod passwords;
pub mod rules;
mod sessions;
pub mod settings;
pub mod store;
pub mod throttle;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use rewards_kit::clock::SharedClock;
use rewards_kit::identity::{IdentityKey, Role};
use rewards_kit::openapi::BearerAuth;
use rewards_kit::store::{Migrations, Store};
use sqlx::migrate::Migrator;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use settings::AuthSettings;

use crate::keys::Keys;
use crate::passwords::Passwords;
use crate::store::{AuthStore, NewUser, StoreError};
use crate::throttle::{LoginThrottle, SignupThrottle};

/// The service's name in logs and readiness reports.
pub const NAME: &str = "auth";

/// The service's default port.
pub const DEFAULT_PORT: u16 = 3001;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// This service's schema, for both engines.
pub static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };

/// Everything a request handler needs.
pub struct Auth {
    pub db: AuthStore,
    pub passwords: Arc<Passwords>,
    pub keys: Arc<Keys>,
    pub throttle: LoginThrottle,
    pub signups: SignupThrottle,
    pub clock: SharedClock,
    pub settings: AuthSettings,
}

/// A running service's shared state.
#[derive(Clone)]
pub struct AppState(pub Arc<Auth>);

impl AppState {
    pub fn store(&self) -> &Store {
        self.0.db.inner()
    }
}

impl std::ops::Deref for AppState {
    type Target = Auth;
    fn deref(&self) -> &Auth {
        &self.0
    }
}

/// Opens (and migrates) the store at `url`, loads or creates the signing
/// keys, and creates the bootstrap admin on a store without one.
pub async fn open(settings: &AuthSettings, url: &str, clock: SharedClock) -> anyhow::Result<AppState> {
    let store = rewards_kit::service::open_store(NAME, url, &settings.store_options(), &MIGRATIONS).await?;
    let db = AuthStore::new(store);
    let passwords = Passwords::new(settings)?;
    let keys = Keys::load(db.clone(), clock.clone(), settings.key_reload()).await?;
    let auth = Auth {
        db,
        passwords,
        keys,
        throttle: LoginThrottle::new(settings),
        signups: SignupThrottle::new(settings),
        clock,
        settings: settings.clone(),
    };
    bootstrap_admin(&auth).await?;
    Ok(AppState(Arc::new(auth)))
}

/// First start: an `admin` account, with the configured password or a
/// generated one printed once. Never a fixed default.
async fn bootstrap_admin(auth: &Auth) -> anyhow::Result<()> {
    if auth.db.any_admin().await? {
        return Ok(());
    }
    let (password, generated) = match auth.settings.admin_password.expose() {
        Some(password) => (password.to_owned(), false),
        None => (generate_password(), true),
    };
    users::check_password(&password).map_err(|e| anyhow::anyhow!("REWARDS_ADMIN_PASSWORD: {}", e.detail))?;
    let hash = auth.passwords.hash(password.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = uuid::Uuid::now_v7().to_string();
    let user = NewUser {
        id: &id,
        username: "admin",
        password_hash: &hash,
        roles: &[Role::Admin],
        referrer_id: None,
        now: auth.clock.now(),
        announce: false,
        registered_by: None,
    };
    match auth.db.insert_user(user).await {
        Ok(_) if generated => {
            // Straight to the terminal, once, and never into the logs.
            println!("\n  Created the bootstrap account `admin` with password: {password}\n  It is not shown again.\n");
            tracing::warn!("created the bootstrap account `admin` with a generated password (printed once)");
        }
        Ok(_) => tracing::info!("created the bootstrap account `admin` with the configured password"),
        // Another instance bootstrapped at the same moment, or `admin` exists without the role.
        Err(StoreError::UsernameTaken) => {
            if !auth.db.any_admin().await? {
                tracing::error!("no account holds ADMIN and the username `admin` is taken; grant ADMIN by hand");
            }
        }
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "rewards auth service", description = "Accounts, roles, tokens and sessions. Reached through the gateway under `/auth-service`."),
    components(schemas(rewards_kit::problem::ProblemSchema, rewards_kit::problem::FieldErrorSchema)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// The routes with their OpenAPI document.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::signup))
        .routes(routes!(users::register))
        .routes(routes!(users::me))
        .routes(routes!(users::list))
        .routes(routes!(users::get_one))
        .routes(routes!(users::set_roles))
        .routes(routes!(users::set_status))
        .routes(routes!(users::audit))
        .routes(routes!(sessions::login))
        .routes(routes!(sessions::refresh))
        .routes(routes!(sessions::logout))
        .routes(routes!(sessions::jwks))
        .routes(routes!(sessions::revocations))
        .routes(routes!(sessions::sign_out_everywhere))
        .routes(routes!(sessions::change_password))
        .routes(routes!(sessions::revoke_key))
        .split_for_parts()
}

/// The service's routes inside the kit's layer stack.
pub fn router(state: AppState, key: IdentityKey) -> Router {
    let (routes, doc) = api();
    let doc = Arc::new(doc);
    let routes = routes
        .with_state(state.clone())
        .route("/openapi.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .merge(rewards_kit::service::ops_routes(state.store().clone()));
    let routes = rewards_kit::rules::enforced(routes, rules::route_rules());
    rewards_kit::http::service_stack(NAME, routes, key, state.settings.body_limit)
}
