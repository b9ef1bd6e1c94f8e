//! Forwarding a request to its backend and the answer back, streamed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rewards_kit::Problem;
use rewards_kit::health::Check;
use rewards_kit::http::KeepBody;
use rewards_kit::identity::{IDENTITY_HEADER, Vouched, strip_identity_headers};
use rewards_kit::problem::ProblemCode;
use serde_json::{Value, json};

use crate::Gateway;
use crate::upstream::Upstream;

/// Pooled keep-alive HTTP/1 connections to the backends.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Everything not served by the gateway itself: forwarded under a known
/// prefix, 404 otherwise.
pub async fn forward(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_owned();
    let Some((upstream, rest)) = gateway.upstreams.resolve(&path) else {
        return Problem::not_found(format!("no route for {path}")).into_response();
    };
    let path_and_query = match request.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let uri = match upstream.uri(&path_and_query) {
        Ok(uri) => uri,
        Err(_) => return Problem::not_found(format!("no route for {path}")).into_response(),
    };

    let (mut parts, body) = request.into_parts();
    rewrite_request_headers(&mut parts.headers, peer);
    // Vouch for the request: the client's address now, its verified identity
    // once tokens are checked here. Signed over the path the backend sees.
    let vouched = Vouched { caller: None, client_ip: Some(peer.ip()) };
    parts.headers.insert(IDENTITY_HEADER, gateway.identity_key.sign(&parts.method, &path_and_query, vouched));
    parts.uri = uri;
    let outgoing = Request::from_parts(parts, body);

    let started = std::time::Instant::now();
    let result = tokio::time::timeout(gateway.timeout, gateway.client.request(outgoing)).await;
    match result {
        Ok(Ok(response)) => {
            let (mut parts, incoming) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            parts.extensions.insert(KeepBody);
            Response::from_parts(parts, Body::new(incoming))
        }
        Ok(Err(err)) => upstream_failure(upstream, &err),
        Err(_) => {
            tracing::warn!(upstream = %upstream.name, waited_ms = started.elapsed().as_millis() as u64, "upstream timed out");
            Problem::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                ProblemCode::GatewayTimeout,
                format!("{} did not answer in time", upstream.name),
            )
            .into_response()
        }
    }
}

/// Removes what a client must not decide (identity headers, hop-by-hop
/// headers, the Host of the gateway) and adds the forwarding headers.
fn rewrite_request_headers(headers: &mut HeaderMap, peer: SocketAddr) {
    strip_identity_headers(headers);
    remove_hop_by_hop(headers);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    // The gateway is the edge: the peer it sees is the client; a client-sent
    // X-Forwarded-For is not trusted.
    let peer_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value");
    headers.insert(HeaderName::from_static("x-forwarded-for"), peer_ip);
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn upstream_failure(upstream: &Upstream, err: &hyper_util::client::legacy::Error) -> Response {
    if err.is_connect() {
        tracing::warn!(upstream = %upstream.name, error = %err, "upstream unreachable");
        Problem::unavailable(format!("{} is unreachable", upstream.name), 1).into_response()
    } else {
        tracing::warn!(upstream = %upstream.name, error = %err, "upstream failed");
        Problem::new(
            http::StatusCode::BAD_GATEWAY,
            ProblemCode::BadGateway,
            format!("{} failed to answer", upstream.name),
        )
        .into_response()
    }
}

/// One backend's part of the gateway's `/ready`: its own `/ready`, within 2 s.
pub async fn probe_ready(client: &Client, upstream: &Upstream, request_id: &str) -> Check {
    let url = upstream.base.to_string();
    let Ok(uri) = upstream.uri("/ready") else {
        return Check::down(json!({ "url": url, "error": "invalid URL" }));
    };
    let request = Request::get(uri)
        .header(rewards_kit::http::REQUEST_ID, request_id)
        .body(Body::empty())
        .expect("a GET with a sane request id is a valid request");
    let answer = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return Check::down(json!({ "url": url, "error": err.to_string() })),
        Err(_) => return Check::down(json!({ "url": url, "error": "no answer within 2s" })),
    };
    let ok = response.status().is_success();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
    let checks =
        serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("checks").cloned()).unwrap_or(Value::Null);
    let details = json!({ "url": url, "checks": checks });
    if ok { Check::up(details) } else { Check::down(details) }
}
