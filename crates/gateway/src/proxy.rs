//! The forwarding pipeline, one phase after another:
//! match the service and route → address rate limit → authenticate →
//! authorize → user rate limit → body limit → pick a healthy instance →
//! rewrite headers and vouch for the caller → forward with a timeout → map
//! upstream failures to problem+json → metrics. (The request id and access
//! log wrap it all, in the kit's layer stack.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rewards_kit::Problem;
use rewards_kit::health::Check;
use rewards_kit::http::KeepBody;
use rewards_kit::identity::{IDENTITY_HEADER, Identity, Vouched, strip_identity_headers};
use rewards_kit::problem::ProblemCode;
use serde_json::{Value, json};

use crate::Gateway;
use crate::jwt::bearer;
use crate::registry::{Instance, Route, Service};

/// Pooled keep-alive HTTP/1 connections to the backends.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// This thread's client. Each runtime thread keeps its own pool, so an
/// upstream connection is driven by the thread that uses it.
pub fn thread_client() -> Client {
    thread_local! {
        static CLIENT: Client = client();
    }
    CLIENT.with(Client::clone)
}

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

/// Everything not served by the gateway itself.
pub async fn forward(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let registry = gateway.registry.load_full();
    let path = request.uri().path();
    let Some((service, rest)) = registry.resolve(path) else {
        return Problem::not_found(format!("no route for {path}")).into_response();
    };
    // A path under a known prefix that no rule names is never forwarded.
    let Some(route) = service.route(request.method(), rest) else {
        let response = Problem::not_found(format!("no route for {} {path}", request.method())).into_response();
        crate::metrics::record(&service.name, &gateway.unmatched, None, response.status(), started.elapsed());
        return response;
    };
    let (response, upstream) = match admit(&gateway, service, route, peer, request.headers()).await {
        Ok(identity) => relay(&gateway, service, route, peer, identity, request).await,
        Err(problem) => (problem.into_response(), None),
    };
    crate::metrics::record(&service.name, &route.label, upstream.as_ref(), response.status(), started.elapsed());
    response
}

/// Limits, authentication and authorization: who is calling, if allowed.
async fn admit(
    gateway: &Gateway,
    service: &Service,
    route: &Route,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Option<Arc<Identity>>, Problem> {
    gateway.limits.check_address(peer.ip())?;
    let identity = match bearer(headers) {
        Some(token) => match gateway.verifier.verify(token).await {
            Ok(identity) => Some(identity),
            // A stale token sent to a public route (a login page, say) is ignored.
            Err(_) if route.rule.public => None,
            Err(problem) => return Err(problem),
        },
        None => None,
    };
    route.rule.check(identity.as_deref()).inspect_err(|p| {
        tracing::debug!(service = %service.name, route = %route.label, status = p.status.as_u16(), "refused at the gateway");
    })?;
    if let Some(identity) = &identity {
        gateway.limits.check_user(&identity.sub)?;
    }
    let too_large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > gateway.settings.body_limit as u64);
    if too_large {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::PayloadTooLarge,
            "the request body is too large",
        ));
    }
    Ok(identity)
}

/// Sends the request to a healthy instance and relays the answer.
async fn relay(
    gateway: &Gateway,
    service: &Service,
    route: &Route,
    peer: SocketAddr,
    identity: Option<Arc<Identity>>,
    request: Request,
) -> (Response, Option<Arc<str>>) {
    let Some(mut instance) = service.pick(None) else {
        let problem = Problem::unavailable(format!("{} has no healthy instance", service.name), 1);
        return (problem.into_response(), None);
    };
    let path_and_query = {
        let rest = &request.uri().path()[service.prefix.len()..];
        let rest = if rest.is_empty() { "/" } else { rest };
        match request.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        }
    };
    let (mut parts, body) = request.into_parts();
    rewrite_request_headers(&mut parts.headers, peer);
    // Vouch for the caller and the client's address, over the path the backend sees.
    let vouched = Vouched { caller: identity.as_deref().cloned(), client_ip: Some(peer.ip()) };
    parts.headers.insert(IDENTITY_HEADER, gateway.identity_key.sign(&parts.method, &path_and_query, vouched));
    let timeout = route.timeout.unwrap_or(Duration::from_millis(gateway.settings.timeout_ms));
    // Bodiless requests may be retried once on another instance when the
    // first cannot be reached (nothing was sent, so nothing happens twice).
    let retryable = service.instances.len() > 1
        && matches!(parts.method, Method::GET | Method::HEAD)
        && body_is_empty(&parts.headers);
    // The request head is kept for a retry only when one is possible.
    let mut spare = retryable.then(|| parts.clone());
    let mut next = Some(Request::from_parts(parts, body));
    loop {
        let uri = match instance.uri(&path_and_query) {
            Ok(uri) => uri,
            Err(_) => return (Problem::not_found("no route for this path").into_response(), None),
        };
        let mut outgoing = match next.take() {
            Some(request) => request,
            None => match spare.take() {
                Some(parts) => Request::from_parts(parts, Body::empty()),
                None => {
                    return (Problem::unavailable(format!("{} is unreachable", service.name), 1).into_response(), None);
                }
            },
        };
        *outgoing.uri_mut() = uri;
        match tokio::time::timeout(timeout, thread_client().request(outgoing)).await {
            Ok(Ok(response)) => {
                let (mut head, incoming) = response.into_parts();
                remove_hop_by_hop(&mut head.headers);
                head.extensions.insert(KeepBody);
                return (Response::from_parts(head, Body::new(incoming)), Some(instance.url.clone()));
            }
            Ok(Err(err)) if err.is_connect() => {
                tracing::warn!(service = %service.name, instance = %instance.url, error = %err, "instance unreachable");
                crate::health::mark(service, &instance, false);
                match service.pick(Some(&instance)).filter(|_| retryable) {
                    Some(next) => instance = next,
                    None => {
                        let problem = Problem::unavailable(format!("{} is unreachable", service.name), 1);
                        return (problem.into_response(), Some(instance.url.clone()));
                    }
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(service = %service.name, instance = %instance.url, error = %err, "upstream failed");
                let problem = Problem::new(
                    StatusCode::BAD_GATEWAY,
                    ProblemCode::BadGateway,
                    format!("{} failed to answer", service.name),
                );
                return (problem.into_response(), Some(instance.url.clone()));
            }
            Err(_) => {
                tracing::warn!(service = %service.name, instance = %instance.url, ?timeout, "upstream timed out");
                let problem = Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ProblemCode::GatewayTimeout,
                    format!("{} did not answer in time", service.name),
                );
                return (problem.into_response(), Some(instance.url.clone()));
            }
        }
    }
}

fn body_is_empty(headers: &HeaderMap) -> bool {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    !headers.contains_key(header::TRANSFER_ENCODING) && length.is_none_or(|l| l == "0")
}

/// Removes what a client must not decide (identity headers, the bearer token,
/// hop-by-hop headers, the gateway's Host) and adds the forwarding headers.
fn rewrite_request_headers(headers: &mut HeaderMap, peer: SocketAddr) {
    strip_identity_headers(headers);
    remove_hop_by_hop(headers);
    // Backends trust the gateway's proof, not tokens: the token stops here.
    headers.remove(header::AUTHORIZATION);
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

/// One instance's part of the gateway's `/ready`: its own `/ready`, within 2 s.
pub async fn probe_ready(client: &Client, instance: &Instance, request_id: &str) -> Check {
    let url = instance.url.to_string();
    let details = |extra: Value| {
        let mut base =
            json!({ "url": url, "healthy": instance.is_healthy(), "lastCheckedAt": instance.last_checked() });
        if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
            base.extend(extra);
        }
        base
    };
    let Ok(uri) = instance.uri("/ready") else {
        return Check::down(details(json!({ "error": "invalid URL" })));
    };
    let request = Request::get(uri)
        .header(rewards_kit::http::REQUEST_ID, request_id)
        .body(Body::empty())
        .expect("a GET with a sane request id is a valid request");
    let response = match tokio::time::timeout(Duration::from_secs(2), client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return Check::down(details(json!({ "error": err.to_string() }))),
        Err(_) => return Check::down(details(json!({ "error": "no answer within 2s" }))),
    };
    let ok = response.status().is_success();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
    let checks =
        serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("checks").cloned()).unwrap_or(Value::Null);
    let details = details(json!({ "checks": checks }));
    if ok { Check::up(details) } else { Check::down(details) }
}
