//! The gateway: the one entry point for all clients.
//!
//! It serves its own `/health` and `/ready`, and forwards everything under a
//! service's prefix (`/auth-service`, `/event-service`) to that service with
//! the prefix removed, after stripping every identity header a client sent.
//! Token verification, route rules and the runtime registry build on this.

mod config;
mod proxy;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use rewards_kit::health::{self, Readiness};
use rewards_kit::http::RequestId;
use rewards_kit::identity::IdentityKey;
use tower_http::limit::RequestBodyLimitLayer;

pub use config::GatewaySettings;
pub use upstream::{Upstream, Upstreams};

/// The service's name in logs.
pub const NAME: &str = "gateway";

/// The gateway's default port.
pub const DEFAULT_PORT: u16 = 3000;

/// Shared by every request the gateway handles.
pub struct Gateway {
    upstreams: Upstreams,
    client: proxy::Client,
    timeout: Duration,
    /// Signs what the gateway vouches for (client address, verified caller).
    identity_key: IdentityKey,
}

/// The gateway's routes and layers.
pub fn router(settings: &GatewaySettings, identity_key: IdentityKey) -> anyhow::Result<Router> {
    let gateway = Arc::new(Gateway {
        upstreams: Upstreams::from_settings(settings)?,
        client: proxy::client(),
        timeout: Duration::from_millis(settings.timeout_ms),
        identity_key,
    });
    let routes = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(ready))
        .fallback(proxy::forward)
        .with_state(gateway)
        .layer(RequestBodyLimitLayer::new(settings.body_limit));
    Ok(rewards_kit::http::gateway_stack(routes))
}

/// Ready when every backend service reports ready. The probes run
/// concurrently: a slow backend must not delay the others' reports.
async fn ready(State(gateway): State<Arc<Gateway>>, Extension(RequestId(id)): Extension<RequestId>) -> Readiness {
    let mut probes = tokio::task::JoinSet::new();
    for upstream in gateway.upstreams.iter().cloned() {
        let client = gateway.client.clone();
        let id = id.clone();
        probes.spawn(async move { (upstream.name.clone(), proxy::probe_ready(&client, &upstream, &id).await) });
    }
    let mut readiness = Readiness::default();
    while let Some(Ok((name, check))) = probes.join_next().await {
        readiness = readiness.with(name, check);
    }
    readiness
}
