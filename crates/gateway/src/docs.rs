//! `GET /openapi.json`: the services' OpenAPI documents merged under their
//! prefixes; `GET /docs`: Swagger UI, served from the binary (works offline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use rewards_kit::extract::Json;
use serde_json::{Map, Value, json};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::Gateway;
use crate::registry::Service;

/// How long a merged document is reused.
const FRESH_FOR: Duration = Duration::from_secs(10);

pub fn swagger_ui<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new("/docs").config(Config::new(["/openapi.json"])).into()
}

pub async fn openapi(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    if let Some((at, doc)) = gateway.docs_cache.lock().await.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return Json(doc.clone());
    }
    let doc = merge(&gateway).await;
    *gateway.docs_cache.lock().await = Some((Instant::now(), doc.clone()));
    Json(doc)
}

async fn merge(gateway: &Gateway) -> Value {
    let registry = gateway.registry.load_full();
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut unavailable = Vec::new();
    for service in registry.services() {
        match fetch(gateway, service).await {
            Some(doc) => {
                for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                    let mut item = item.clone();
                    tag_operations(&mut item, &service.name);
                    paths.insert(format!("{}{}", service.prefix, path), item);
                }
                for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
                    schemas.insert(name.clone(), schema.clone());
                }
            }
            None => unavailable.push(service.name.to_string()),
        }
    }
    let mut description = "The rewards platform through its gateway. Send `Authorization: Bearer <access_token>` \
                           from `POST /auth-service/auth/login`."
        .to_owned();
    if !unavailable.is_empty() {
        description.push_str(&format!(" Not included (unreachable now): {}.", unavailable.join(", ")));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "rewards", "version": env!("CARGO_PKG_VERSION"), "description": description },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        },
    })
}

/// Groups a service's operations under its name in the docs UI.
fn tag_operations(item: &mut Value, service: &str) {
    for operation in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        if let Some(op) = operation.as_object_mut() {
            let tags = op.entry("tags").or_insert_with(|| json!([]));
            if let Some(tags) = tags.as_array_mut() {
                tags.insert(0, json!(service));
            }
        }
    }
}

async fn fetch(gateway: &Gateway, service: &Service) -> Option<Value> {
    let instance = service.pick(None)?.clone();
    let request = Request::get(instance.uri("/openapi.json").ok()?).body(Body::empty()).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), gateway.client.request(request)).await.ok()?.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
    let doc: Value = serde_json::from_slice(&body).ok()?;
    doc.get("openapi").is_some().then_some(doc)
}
