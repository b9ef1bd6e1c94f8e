//! The HTTP layer stack every service shares.
//!
//! Outermost first: request id and access log (one span per request, so every
//! log line inside carries the request id) → panics turned into a 500 problem
//! → framework-made error responses (405, 413, ...) turned into problems →
//! body size limit → identity proof verification → the service's routes, with
//! a problem+json 404 for unknown paths.

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::identity::{IdentityKey, verify_identity};
use crate::problem::{PROBLEM_JSON, Problem, ProblemCode};

/// The request id header, generated or propagated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Default request body limit for services (1 MiB: an activity batch of 1000
/// fits, anything much larger is a mistake or an attack).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The request's id, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Wraps a service's routes in the shared stack. `key` verifies the gateway's
/// identity proof.
pub fn service_stack(service: &'static str, routes: Router, key: IdentityKey, body_limit: usize) -> Router {
    routes
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(key, verify_identity))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(CatchPanicLayer::custom(panic_problem))
        .layer(middleware::from_fn_with_state(service, request_context))
}

/// The same stack for the gateway, which verifies tokens itself and streams
/// bodies to backends (so no identity layer and no buffering body limit here).
pub fn gateway_stack(routes: Router) -> Router {
    let service = "gateway";
    routes
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(CatchPanicLayer::custom(panic_problem))
        .layer(middleware::from_fn_with_state(service, request_context))
}

/// Marks an error response whose body is deliberate (relayed from a backend,
/// or a `/ready` report): it is passed on as it is.
#[derive(Debug, Clone, Copy)]
pub struct KeepBody;

/// 404 for any path no route knows.
pub async fn unknown_path(OriginalUri(uri): OriginalUri) -> Problem {
    Problem::not_found(format!("no route for {}", uri.path()))
}

fn panic_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Problem::internal().into_response()
}

/// A client's request id is kept when it is sane: 1 to 128 characters of
/// letters, digits and `-_.:`. Anything else is replaced.
pub fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    is_sane_request_id(text.as_bytes()).then_some(text)
}

/// [`sane_request_id`] for a header value as the bytes that were sent.
pub fn is_sane_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The id of a request that arrived `at`: a UUIDv7 (time-ordered, random
/// below the millisecond; no shared counter, so threads minting ids never
/// wait for each other).
fn request_id_at(at: std::time::SystemTime) -> uuid::Uuid {
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, since_epoch.as_secs(), since_epoch.subsec_nanos()))
}

/// A fresh request id, as a header value, for a request that arrived `at`
/// (a caller that has read the clock already need not read it again).
pub fn new_request_id_header_at(at: std::time::SystemTime) -> HeaderValue {
    HeaderValue::from_bytes(&new_request_id_text_at(at)).expect("a UUID is plain ASCII")
}

/// A fresh request id for a request that arrived `at`, as its text's bytes
/// (for a caller that writes it out itself).
pub fn new_request_id_text_at(at: std::time::SystemTime) -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    request_id_at(at).hyphenated().encode_lower(&mut text);
    text
}

/// A fresh request id.
pub fn new_request_id() -> String {
    request_id_at(std::time::SystemTime::now()).to_string()
}

/// Request id, tracing span and access log in one place.
pub async fn request_context(State(service): State<&'static str>, mut request: Request, next: Next) -> Response {
    let id =
        request.headers().get(REQUEST_ID).and_then(sane_request_id).map(str::to_owned).unwrap_or_else(new_request_id);
    let header_value = HeaderValue::try_from(id.as_str()).expect("request ids are plain ASCII");
    request.headers_mut().insert(REQUEST_ID, header_value.clone());
    request.extensions_mut().insert(RequestId(id.clone()));

    let span = tracing::info_span!("request", service, request_id = %id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(REQUEST_ID, header_value);
    log_served(&span, response.status(), started);
    response
}

/// The access log's line for one request, inside its span.
pub fn log_served(span: &tracing::Span, status: axum::http::StatusCode, started: Instant) {
    log_served_after(span, status, started.elapsed());
}

/// [`log_served`] for a request answered `took` after it arrived.
pub fn log_served_after(span: &tracing::Span, status: axum::http::StatusCode, took: std::time::Duration) {
    span.in_scope(|| tracing::info!(status = status.as_u16(), latency_us = took.as_micros() as u64, "request served"));
}

/// Error responses made by the framework or by layers (405 with `Allow`, 413
/// from the body limit, ...) become problem+json with the matching code, so a
/// client sees one error format whatever produced the error.
pub async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|ct| ct.as_bytes() == PROBLEM_JSON.as_bytes());
    let keep = response.extensions().get::<KeepBody>().is_some();
    if !(status.is_client_error() || status.is_server_error()) || is_problem || keep {
        return response;
    }
    let code = ProblemCode::for_status(status);
    let detail = match code {
        ProblemCode::MethodNotAllowed => "this path does not support that method",
        ProblemCode::PayloadTooLarge => "the request body is too large",
        _ => code.title(),
    };
    let mut problem = Problem::new(status, code, detail);
    problem.allow = response.headers().get(header::ALLOW).cloned();
    problem.into_response()
}
