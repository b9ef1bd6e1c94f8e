//! The events service: events, rewards, claims and the activity ledger.
//!
//! It owns its store (SQLite or PostgreSQL, migrations for both under
//! `migrations/`) and trusts a caller's identity only through the gateway's
//! proof, verified by the kit's layer stack. Its route rules
//! ([`rules::route_rules`]) are enforced here and by the gateway.

pub mod activities;
mod batch;
pub mod claims;
pub mod commit;
pub mod condition;
pub mod dates;
pub mod domain;
pub mod evaluator;
mod events;
mod keys;
pub mod payout;
mod rewards;
pub mod rule;
pub mod rules;
pub mod settings;
pub mod store;
mod targets;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, patch};
use chrono::{DateTime, Utc};
use rewards_kit::Problem;
use rewards_kit::audit::{AuditFilter, AuditView};
use rewards_kit::clock::{SharedClock, from_micros};
use rewards_kit::extract::{Json, Query};
use rewards_kit::identity::{Caller, IdentityKey, Role};
use rewards_kit::openapi::BearerAuth;
use rewards_kit::page::{Cursor, Page, PageRequest};
use rewards_kit::problem::ProblemSchema;
use rewards_kit::store::{Migrations, Store};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use settings::EventsSettings;

use crate::store::CatalogStore;

/// The service's name in logs and readiness reports.
pub const NAME: &str = "events";

/// The service's default port.
pub const DEFAULT_PORT: u16 = 3002;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// This service's schema, for both engines.
pub static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };

/// Everything a request handler needs.
pub struct Events {
    pub catalog: CatalogStore,
    /// Writes grants in group commits.
    pub committer: commit::Committer,
    /// Hands payouts that just became due to the dispatcher.
    pub handoff: payout::Handoff,
    /// The other end, until the dispatcher takes it.
    handed: std::sync::Mutex<Option<payout::Handed>>,
    pub clock: SharedClock,
    pub settings: EventsSettings,
}

/// A running service's shared state.
#[derive(Clone)]
pub struct AppState(pub Arc<Events>);

impl AppState {
    pub fn store(&self) -> &Store {
        self.0.catalog.inner()
    }
}

impl std::ops::Deref for AppState {
    type Target = Events;
    fn deref(&self) -> &Events {
        &self.0
    }
}

/// Opens (and migrates) the store at `url`.
pub async fn open(settings: &EventsSettings, url: &str, clock: SharedClock) -> anyhow::Result<AppState> {
    dates::time_zone(&settings.time_zone).map_err(anyhow::Error::msg)?;
    let store = rewards_kit::service::open_store(NAME, url, &settings.store_options(), &MIGRATIONS).await?;
    let (handoff, handed) = payout::Handoff::channel();
    let committer = commit::Committer::start(store.clone(), handoff.clone());
    let catalog = CatalogStore::new(store, std::time::Duration::from_millis(settings.claim_cache_ms));
    let handed = std::sync::Mutex::new(Some(handed));
    Ok(AppState(Arc::new(Events { catalog, committer, handoff, handed, clock, settings: settings.clone() })))
}

/// A new id: a UUIDv7, in the order made across the process (a claim's
/// transitions sort by id in the order they happened).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "rewards events service", description = "Events, rewards and their audit trail. Reached through the gateway under `/event-service`."),
    components(schemas(ProblemSchema, rewards_kit::problem::FieldErrorSchema)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events::create, events::list))
        .routes(routes!(events::get_one, events::update))
        .routes(routes!(rewards::create, rewards::list))
        .routes(routes!(rewards::get_one, rewards::update))
        .routes(routes!(audit))
        .routes(routes!(activities::record))
        .routes(routes!(progress))
        .routes(routes!(claims::create, claims::list))
        .routes(routes!(claims::mine))
        .routes(routes!(claims::get_one))
        .routes(routes!(claims::transitions))
        .routes(routes!(claims::approve))
        .routes(routes!(claims::reject))
        .routes(routes!(claims::retry))
        .split_for_parts();
    // PATCH is an alias of PUT for partial updates.
    let router = router.route("/events/{id}", patch(events::update)).route("/rewards/{id}", patch(rewards::update));
    (router, doc)
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

/// A player's progress toward one claimable event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventProgress {
    pub event_id: String,
    pub name: String,
    pub end_date: DateTime<Utc>,
    pub progress: evaluator::Progress,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressList {
    pub items: Vec<EventProgress>,
}

/// For each event the caller can claim now, how far it is toward the
/// condition (what is met, what is missing).
#[utoipa::path(get, path = "/progress/me", tag = "progress", security(("bearer" = [])),
    responses((status = 200, body = ProgressList), (status = 401, body = ProblemSchema)))]
async fn progress(State(state): State<AppState>, caller: Caller) -> Result<Json<ProgressList>, Problem> {
    let now = state.clock.now();
    let filter = store::EventFilter {
        status: Some(domain::EventStatus::Active),
        active_at: Some(rewards_kit::clock::to_micros(now)),
    };
    let page = PageRequest::parse(Some(rewards_kit::page::MAX_LIMIT), None)?;
    let ledger = evaluator::Ledger { store: state.store() };
    let mut items = Vec::new();
    for row in state.catalog.list_events(&filter, &page).await? {
        let Ok(condition) = serde_json::from_str(&row.condition)
            .map_err(|_| ())
            .and_then(|v| condition::Condition::parse(&v, "condition").map_err(|_| ()))
        else {
            tracing::error!(event_id = %row.id, "stored condition does not parse");
            continue;
        };
        let tz = dates::time_zone(&row.time_zone).unwrap_or(chrono_tz::Tz::UTC);
        let window = evaluator::window_of(from_micros(row.start_at), from_micros(row.end_at), tz);
        let progress = ledger.evaluate(&caller.0.sub, &condition, window).await?;
        items.push(EventProgress { event_id: row.id, name: row.name, end_date: from_micros(row.end_at), progress });
    }
    Ok(Json(ProgressList { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `event` or `reward`.
    pub entity: Option<String>,
    /// One event's or reward's records.
    pub entity_id: Option<String>,
    /// Changes made by this user id.
    pub actor: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The audit trail of events and rewards, newest first (AUDITOR, ADMIN).
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AuditView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema)))]
async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Page<AuditView>>, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    if query.entity.as_deref().is_some_and(|e| !["event", "reward"].contains(&e)) {
        return Err(Problem::invalid_field("entity", "must be event or reward"));
    }
    let filter = AuditFilter {
        entity: query.entity.as_deref(),
        entity_id: query.entity_id.as_deref(),
        actor: query.actor.as_deref(),
    };
    let rows = rewards_kit::audit::list(state.store(), filter, &page).await?;
    let page = Page::from_rows(rows, &page, |r| Cursor { at: r.created_at, id: r.id.clone() });
    Ok(Json(page.map(AuditView::from)))
}
