//! Following the auth service's revocation feed, so that a role change (and
//! every other change that revokes a user's tokens), or a revoked signing
//! key, holds at this gateway within a second, not when the tokens expire.
//!
//! Every [`POLL`] the gateway asks an `auth-service` instance for the
//! revocations since the last it saw (`GET /revocations?since=`, with an
//! identity proof of its own as an internal service) and hands them to the
//! verifier. It asks again from a little before the last one seen
//! ([`OVERLAP`]): a revocation stamped a moment earlier may commit a moment
//! later. When the auth service cannot be reached, what was learned stays.

use std::sync::Weak;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use rewards_kit::identity::{IDENTITY_HEADER, Identity, Vouched};
use serde::Deserialize;

use crate::Gateway;

/// How often the feed is asked.
pub const POLL: Duration = Duration::from_millis(250);
/// How far back each question reaches before the last revocation seen (µs).
const OVERLAP: i64 = 5_000_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Feed {
    items: Vec<Item>,
    until: i64,
    more: bool,
    #[serde(default)]
    revoked_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    user_id: String,
    token_version: i64,
}

/// Runs until the gateway is dropped.
pub async fn run(gateway: Weak<Gateway>) {
    let mut since = 0;
    let mut failing = false;
    loop {
        let Some(gw) = gateway.upgrade() else { return };
        match catch_up(&gw, since).await {
            Ok(until) => {
                since = since.max(until - OVERLAP);
                if failing {
                    tracing::info!("following the revocation feed again");
                }
                failing = false;
            }
            Err(err) => {
                // Said once per outage, not every poll.
                if !failing {
                    tracing::warn!(error = %err, "could not follow the revocation feed; what was learned stays");
                }
                failing = true;
            }
        }
        drop(gw);
        tokio::time::sleep(POLL).await;
    }
}

/// Reads the feed from `since` to its end; returns where it ended.
async fn catch_up(gw: &Gateway, mut since: i64) -> anyhow::Result<i64> {
    loop {
        let feed = fetch(gw, since).await?;
        gw.verifier.learn_revocations(feed.items.into_iter().map(|i| (i.user_id, i.token_version)));
        gw.verifier.learn_revoked_keys(feed.revoked_keys);
        if !feed.more || feed.until <= since {
            return Ok(feed.until);
        }
        since = feed.until;
    }
}

async fn fetch(gw: &Gateway, since: i64) -> anyhow::Result<Feed> {
    let registry = gw.registry.load_full();
    let auth = registry.service("auth-service").ok_or_else(|| anyhow::anyhow!("no auth-service in the registry"))?;
    let instance = auth
        .instances
        .iter()
        .find(|i| i.is_healthy())
        .or_else(|| auth.instances.first())
        .ok_or_else(|| anyhow::anyhow!("auth-service has no instance"))?;
    let path = format!("/revocations?since={since}");
    let proof = gw.identity_key.sign(&Method::GET, &path, Vouched::from(Identity::service("gateway")));
    let request = Request::get(instance.uri(&path)?).header(IDENTITY_HEADER, proof).body(Body::empty())?;
    let response = tokio::time::timeout(Duration::from_secs(2), gw.client.request(request)).await??;
    anyhow::ensure!(response.status().is_success(), "status {}", response.status());
    let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}
