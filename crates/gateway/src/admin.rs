//! The registry's ADMIN API: `GET/POST /gateway/services`,
//! `DELETE /gateway/services/{name}`. Changes take effect at once and last
//! until the gateway restarts (the registry file is the durable record).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rewards_kit::Problem;
use rewards_kit::extract::{Json, Path};
use rewards_kit::identity::{Identity, Role};
use rewards_kit::problem::ProblemCode;
use serde_json::{Value, json};

use crate::Gateway;
use crate::jwt::bearer;
use crate::registry::{Registry, Service, ServiceSpec};

/// The caller, if it holds ADMIN: 401 without a valid token, 403 without the role.
async fn admin(gateway: &Gateway, headers: &HeaderMap) -> Result<Arc<Identity>, Problem> {
    let token = bearer(headers).ok_or_else(|| Problem::unauthenticated("sign in to use this route"))?;
    let identity = gateway.verifier.verify(token).await?;
    if identity.has_role(Role::Admin) { Ok(identity) } else { Err(Problem::forbidden("your roles do not allow this")) }
}

pub fn service_view(service: &Service) -> Value {
    let instances: Vec<Value> = service
        .instances
        .iter()
        .map(|i| json!({ "url": i.url, "healthy": i.is_healthy(), "lastCheckedAt": i.last_checked() }))
        .collect();
    json!({ "name": service.name, "prefix": service.prefix, "instances": instances, "routes": service.spec().routes })
}

pub async fn list(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admin(&gateway, &headers).await?;
    let registry = gateway.registry.load();
    let mut items: Vec<Value> = registry.services().map(|s| service_view(s)).collect();
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({ "items": items })))
}

/// Registers a service, or replaces the one of the same name.
pub async fn register(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Json(spec): Json<ServiceSpec>,
) -> Result<Response, Problem> {
    let caller = admin(&gateway, &headers).await?;
    let _changing = gateway.registry_lock.lock().await;
    let current = gateway.registry.load_full();
    let replaced = current.service(&spec.name).is_some();
    let mut specs: Vec<ServiceSpec> = current.specs().into_iter().filter(|s| s.name != spec.name).collect();
    specs.push(spec.clone());
    let next = Registry::build(specs, Some(&current)).map_err(|reason| {
        if reason.contains("taken by") {
            Problem::conflict(ProblemCode::Conflict, reason)
        } else {
            Problem::invalid_field("service", reason)
        }
    })?;
    let view = service_view(next.service(&spec.name).expect("just registered"));
    gateway.replace_registry(next);
    tracing::info!(service = %spec.name, prefix = %spec.prefix, instances = ?spec.instances, by = %caller.sub, replaced, "service registered");
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view)).into_response())
}

pub async fn remove(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let caller = admin(&gateway, &headers).await?;
    let _changing = gateway.registry_lock.lock().await;
    let current = gateway.registry.load_full();
    if current.service(&name).is_none() {
        return Err(Problem::not_found(format!("no service is called `{name}`")));
    }
    let specs = current.specs().into_iter().filter(|s| s.name != name).collect();
    let next = Registry::build(specs, Some(&current)).map_err(Problem::internal_from)?;
    gateway.replace_registry(next);
    tracing::info!(service = %name, by = %caller.sub, "service removed");
    Ok(StatusCode::NO_CONTENT)
}
