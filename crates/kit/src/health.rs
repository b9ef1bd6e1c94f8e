//! `/health` (the process is alive) and `/ready` (it can do its work: its
//! store, or for the gateway its backends, answer).

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Liveness: answers as long as the process serves HTTP.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The state of one dependency.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub status: CheckStatus,
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Up,
    Down,
}

impl Check {
    pub fn up(details: Value) -> Self {
        Self { status: CheckStatus::Up, details: into_map(details) }
    }

    pub fn down(details: Value) -> Self {
        Self { status: CheckStatus::Down, details: into_map(details) }
    }
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => Map::from_iter([("detail".to_owned(), other)]),
    }
}

/// The body of `/ready`: 200 when every check is up, 503 otherwise.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Readiness {
    pub checks: BTreeMap<String, Check>,
}

impl Readiness {
    pub fn with(mut self, name: impl Into<String>, check: Check) -> Self {
        self.checks.insert(name.into(), check);
        self
    }

    pub fn is_ready(&self) -> bool {
        self.checks.values().all(|c| c.status == CheckStatus::Up)
    }
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let ready = self.is_ready();
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let body = json!({ "status": if ready { "ready" } else { "unavailable" }, "checks": self.checks });
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(crate::http::KeepBody);
        response
    }
}
