//! The gateway: the one entry point for all clients.
//!
//! It keeps a registry of services (prefix, instances, route rules), verifies
//! access tokens against the auth service's public keys, refuses what the
//! route rules do not allow, and forwards the rest to a healthy instance with
//! the caller's identity vouched for by the kit's proof. See [`proxy`] for the
//! pipeline, phase by phase, and [`server`] for how it is served.

mod admin;
mod body;
mod config;
mod deadline;
mod docs;
mod health;
mod jwt;
mod limits;
mod metrics;
mod plain;
mod proxy;
pub mod registry;
mod revocations;
mod server;
mod upstream;
mod wire;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::routing::{delete, get};
use rewards_kit::health::Readiness;
use rewards_kit::http::RequestId;
use rewards_kit::identity::IdentityKey;
use rewards_kit::server::Shutdown;
use serde_json::Value;
use tower_http::limit::RequestBodyLimitLayer;

pub use config::GatewaySettings;
pub use registry::{RegistryFile, ServiceSpec};

use crate::registry::Registry;

/// The service's name in logs.
pub const NAME: &str = "gateway";

/// The hash map of the gateway's own lookups (keys it makes itself, so a
/// fast hash without flooding protection is enough).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The gateway's default port.
pub const DEFAULT_PORT: u16 = 3000;

/// The built-in registry file.
pub const DEFAULT_REGISTRY: &str = include_str!("../default-registry.toml");

/// Shared by every request the gateway handles.
pub struct Gateway {
    registry: ArcSwap<Registry>,
    /// Bumped after each registry change, so serving threads know to take
    /// a new snapshot (see `proxy::Here`).
    registry_version: std::sync::atomic::AtomicU64,
    /// Serialises registry changes (reads never wait).
    registry_lock: tokio::sync::Mutex<()>,
    /// For the gateway's own calls (probes, keys, documents); forwarded
    /// requests use the serving threads' own connections.
    client: upstream::Client,
    verifier: jwt::Verifier,
    limits: limits::Limits,
    settings: GatewaySettings,
    identity_key: IdentityKey,
    docs_cache: tokio::sync::Mutex<Option<(Instant, Value)>>,
    metrics: metrics::Metrics,
}

impl Gateway {
    /// Puts `next` in place of the registry (callers hold `registry_lock`).
    fn replace_registry(&self, next: Registry) {
        self.registry.store(Arc::new(next));
        self.registry_version.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// A gateway ready to serve: its state (with the background upkeep running)
/// and the router of its own paths.
pub struct GatewayServer {
    gateway: Arc<Gateway>,
    own: Router,
}

impl GatewayServer {
    /// Serves on `listeners` (one serving thread each; see
    /// [`rewards_kit::server::bind_reuseport`]) until `shutdown`, then drains.
    pub async fn serve(self, listeners: Vec<std::net::TcpListener>, shutdown: Shutdown) -> anyhow::Result<()> {
        server::serve(self.gateway, self.own, listeners, shutdown).await
    }
}

/// The registry the gateway starts with: the configured file, or the
/// built-in one pointed at `auth_url` and `events_url`.
pub fn initial_registry(settings: &GatewaySettings) -> anyhow::Result<Vec<ServiceSpec>> {
    match &settings.registry_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(RegistryFile::parse(&text).with_context(|| format!("parsing {}", path.display()))?.services)
        }
        None => {
            let mut services = RegistryFile::parse(DEFAULT_REGISTRY).context("the built-in registry")?.services;
            for service in &mut services {
                match service.name.as_str() {
                    "auth-service" => service.instances = vec![settings.auth_url.clone()],
                    "event-service" => service.instances = vec![settings.events_url.clone()],
                    _ => {}
                }
            }
            Ok(services)
        }
    }
}

/// The gateway with the configured registry; starts its background upkeep
/// (health probes, key refresh), which ends when the gateway is dropped.
pub fn build(settings: &GatewaySettings, identity_key: IdentityKey) -> anyhow::Result<GatewayServer> {
    build_with_registry(settings, identity_key, initial_registry(settings)?)
}

/// [`build`] with the given services instead of the configured registry.
pub fn build_with_registry(
    settings: &GatewaySettings,
    identity_key: IdentityKey,
    services: Vec<ServiceSpec>,
) -> anyhow::Result<GatewayServer> {
    let registry = Registry::build(services, None).map_err(anyhow::Error::msg)?;
    let jwks_url = match &settings.jwks_url {
        Some(url) => url.clone(),
        None => {
            let auth = registry.service("auth-service").context(
                "no `auth-service` in the registry: set gateway.jwks_url to where access-token keys are published",
            )?;
            format!("{}/.well-known/jwks.json", auth.instances[0].url)
        }
    };
    let client = upstream::client();
    let verifier = jwt::Verifier::new(
        jwks_url.parse().with_context(|| format!("invalid JWKS URL `{jwks_url}`"))?,
        client.clone(),
        &settings.issuer,
        &settings.audience,
        settings.token_cache_size,
    );
    let gateway = Arc::new(Gateway {
        registry: ArcSwap::from_pointee(registry),
        registry_version: std::sync::atomic::AtomicU64::new(0),
        registry_lock: tokio::sync::Mutex::new(()),
        client,
        verifier,
        limits: limits::Limits::new(settings),
        settings: settings.clone(),
        identity_key,
        docs_cache: tokio::sync::Mutex::new(None),
        metrics: metrics::Metrics::default(),
    });
    tokio::spawn(health::run(Arc::downgrade(&gateway)));
    tokio::spawn(revocations::run(Arc::downgrade(&gateway)));
    // Only the gateway's own paths come here (see `registry::is_reserved`).
    let own = Router::new()
        .route("/health", get(rewards_kit::health::health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::serve))
        .route("/openapi.json", get(docs::openapi))
        .route("/gateway/services", get(admin::list).post(admin::register))
        .route("/gateway/services/{name}", delete(admin::remove))
        .fallback(rewards_kit::http::unknown_path)
        .with_state(gateway.clone())
        .merge(docs::swagger_ui())
        .layer(RequestBodyLimitLayer::new(settings.body_limit));
    Ok(GatewayServer { gateway, own: rewards_kit::http::gateway_stack(own) })
}

/// Ready when every service has an instance whose `/ready` answers; the
/// report lists each instance with the health checker's verdict.
async fn ready(State(gateway): State<Arc<Gateway>>, Extension(RequestId(id)): Extension<RequestId>) -> Readiness {
    let registry = gateway.registry.load_full();
    let mut probes = tokio::task::JoinSet::new();
    for service in registry.services() {
        for instance in &service.instances {
            let (client, id, name, instance) =
                (gateway.client.clone(), id.clone(), service.name.clone(), instance.clone());
            probes.spawn(async move { (name, proxy::probe_ready(&client, &instance, &id).await) });
        }
    }
    let mut by_service: std::collections::BTreeMap<Arc<str>, Vec<rewards_kit::health::Check>> = Default::default();
    while let Some(Ok((name, check))) = probes.join_next().await {
        by_service.entry(name).or_default().push(check);
    }
    let mut readiness = Readiness::default();
    for (name, mut checks) in by_service {
        checks.sort_by(|a, b| a.details["url"].as_str().cmp(&b.details["url"].as_str()));
        let up = checks.iter().any(|c| c.status == rewards_kit::health::CheckStatus::Up);
        // One instance: its report as it is; several: each listed.
        let check = if checks.len() == 1 {
            checks.pop().expect("one check")
        } else {
            let details = serde_json::json!({ "instances": checks });
            if up { rewards_kit::health::Check::up(details) } else { rewards_kit::health::Check::down(details) }
        };
        let check = rewards_kit::health::Check {
            status: if up { check.status } else { rewards_kit::health::CheckStatus::Down },
            ..check
        };
        readiness = readiness.with(name.to_string(), check);
    }
    readiness
}
