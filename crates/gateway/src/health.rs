//! Background upkeep: every instance's `/health` probed on an interval (an
//! instance that fails leaves the rotation and returns when it recovers),
//! the JWKS refreshed, caches swept, histograms drained.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;

use crate::Gateway;
use crate::registry::{Instance, Service};

const JWKS_REFRESH: Duration = Duration::from_secs(60);

/// Runs until the gateway is dropped.
pub async fn run(gateway: Weak<Gateway>) {
    if let Some(gw) = gateway.upgrade() {
        gw.verifier.refresh().await;
    }
    let mut last_jwks = Instant::now();
    loop {
        let Some(gw) = gateway.upgrade() else { return };
        let interval = Duration::from_millis(gw.settings.health_interval_ms.max(50));
        probe_all(&gw).await;
        if last_jwks.elapsed() >= JWKS_REFRESH {
            gw.verifier.refresh().await;
            last_jwks = Instant::now();
        }
        gw.verifier.sweep();
        gw.limits.sweep();
        drop(gw);
        tokio::time::sleep(interval).await;
    }
}

async fn probe_all(gw: &Arc<Gateway>) {
    let registry = gw.registry.load_full();
    let timeout = Duration::from_millis(gw.settings.health_interval_ms.clamp(100, 2_000));
    let mut probes = tokio::task::JoinSet::new();
    for service in registry.services() {
        for instance in &service.instances {
            let (client, service, instance) = (gw.client.clone(), service.clone(), instance.clone());
            probes.spawn(async move {
                let healthy = probe(&client, &instance, timeout).await;
                mark(&service, &instance, healthy);
            });
        }
    }
    while probes.join_next().await.is_some() {}
}

async fn probe(client: &crate::upstream::Client, instance: &Instance, timeout: Duration) -> bool {
    let Ok(uri) = instance.uri("/health") else { return false };
    let Ok(request) = Request::get(uri).body(Body::empty()) else { return false };
    matches!(tokio::time::timeout(timeout, client.request(request)).await, Ok(Ok(r)) if r.status().is_success())
}

/// Records an instance's health, logging when it changes.
pub fn mark(service: &Service, instance: &Instance, healthy: bool) {
    if instance.set_healthy(healthy, chrono::Utc::now()) {
        if healthy {
            tracing::info!(service = %service.name, instance = %instance.url, "instance is healthy again; back in rotation");
        } else {
            tracing::warn!(service = %service.name, instance = %instance.url, "instance failed; out of rotation");
        }
    }
}
