//! The forwarding pipeline, one phase after another:
//! request id and access log → match the service and route → address rate
//! limit → authenticate → authorize → user rate limit → body limit → pick a
//! healthy instance → rewrite headers and vouch for the caller → forward with
//! a timeout → map upstream failures to problem+json → metrics.
//!
//! This is the gateway's hot path: what can be worked out once is (the token
//! a connection last sent and what it proved, the verified tokens per thread
//! with their identity proofs prepared, the client's address per connection,
//! each instance's `Host`, the registry snapshot, a metrics table and a
//! deadline table per thread), so a request costs a comparison, the rest of
//! one MAC and the two HTTP exchanges.

use std::cell::{OnceCell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::header::Entry;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};
use rewards_kit::Problem;
use rewards_kit::health::Check;
use rewards_kit::http::{REQUEST_ID, log_served, new_request_id_header_at, sane_request_id};
use rewards_kit::identity::{
    IDENTITY_HEADER, IdentityKey, Prepared, Vouched, is_identity_header, payload_of, strip_identity_headers,
};
use rewards_kit::problem::ProblemCode;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::Gateway;
use crate::body::{GatewayBody, local};
use crate::deadline;
use crate::jwt::{LastToken, Verified};
use crate::metrics::Recorder;
use crate::registry::{Instance, Registry, Route, Service};
use crate::upstream::{self, Client, Failure, RequestBody};

/// Headers that describe one hop, never forwarded (the list is the own
/// HTTP/1 path's, [`crate::wire::is_hop_by_hop`]).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::wire::is_hop_by_hop(name.as_str().as_bytes())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What one serving thread keeps for the requests it serves.
pub struct Here {
    pub metrics: Recorder,
    /// The registry snapshot this thread's requests use, and its version.
    registry: RefCell<(u64, Rc<Snapshot>)>,
}

/// A registry snapshot shared by one thread's requests (an `Rc` of it
/// clones without touching the registry's atomic reference count).
pub struct Snapshot(Arc<Registry>);

impl std::ops::Deref for Snapshot {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.0
    }
}

impl Here {
    pub fn new(gateway: &Gateway) -> Self {
        let snapshot =
            (gateway.registry_version.load(Ordering::Acquire), Rc::new(Snapshot(gateway.registry.load_full())));
        Self { metrics: gateway.metrics.recorder(), registry: RefCell::new(snapshot) }
    }

    /// The current registry. Taken anew only after a change, so a request
    /// touches no reference count that another core writes too.
    pub(crate) fn registry(&self, gateway: &Gateway) -> Rc<Snapshot> {
        let version = gateway.registry_version.load(Ordering::Acquire);
        let mut snapshot = self.registry.borrow_mut();
        if snapshot.0 != version {
            *snapshot = (version, Rc::new(Snapshot(gateway.registry.load_full())));
        }
        snapshot.1.clone()
    }
}

/// The client at the other end of one connection, as the gateway sees it.
pub struct Peer {
    pub addr: SocketAddr,
    /// `X-Forwarded-For`: the gateway is the edge, so the peer is the client.
    pub(crate) forwarded_for: HeaderValue,
    /// The identity proof prepared for an anonymous caller from this address.
    anonymous: OnceCell<Rc<Prepared>>,
    last_token: LastToken,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let forwarded_for =
            HeaderValue::try_from(addr.ip().to_string()).expect("an IP address is a valid header value");
        Self { addr, forwarded_for, anonymous: OnceCell::new(), last_token: LastToken::default() }
    }

    fn anonymous(&self, key: &IdentityKey) -> Rc<Prepared> {
        self.anonymous
            .get_or_init(|| {
                Rc::new(key.prepare(payload_of(&Vouched { caller: None, client_ip: Some(self.addr.ip()) })))
            })
            .clone()
    }
}

/// Everything not served by the gateway itself.
pub async fn forward(
    gateway: &Gateway,
    here: &Here,
    peer: &Peer,
    mut request: Request<Incoming>,
) -> Response<GatewayBody> {
    let started = Instant::now();
    let now = SystemTime::now();
    // The client's request id when it is sane, else a fresh one; either way
    // the only one the backend sees (one lookup in all cases).
    let request_id = match request.headers_mut().entry(REQUEST_ID) {
        Entry::Occupied(mut sent) => {
            let id = match sane_request_id(sent.get()) {
                Some(_) => sent.get().clone(),
                None => new_request_id_header_at(now),
            };
            // Replaces every value sent (a duplicate must not slip through).
            sent.insert(id.clone());
            id
        }
        Entry::Vacant(none) => none.insert(new_request_id_header_at(now)).clone(),
    };
    let span = tracing::info_span!("request", service = crate::NAME, request_id = request_id.to_str().unwrap_or(""),
        method = %request.method(), path = %request.uri().path());
    let mut response = route_and_relay(gateway, here, peer, request, started, now).instrument(span.clone()).await;
    response.headers_mut().insert(REQUEST_ID, request_id);
    log_served(&span, response.status(), started);
    response
}

async fn route_and_relay(
    gateway: &Gateway,
    here: &Here,
    peer: &Peer,
    request: Request<Incoming>,
    started: Instant,
    now: SystemTime,
) -> Response<GatewayBody> {
    let registry = here.registry(gateway);
    let path = request.uri().path();
    let Some((service, rest)) = registry.resolve(path) else {
        return local(Problem::not_found(format!("no route for {path}")));
    };
    // A path under a known prefix that no rule names is never forwarded.
    let Some(route) = service.route(request.method(), rest) else {
        let response = local(Problem::not_found(format!("no route for {} {path}", request.method())));
        here.metrics.record(service, None, None, response.status(), started.elapsed());
        return response;
    };
    let headers = request.headers();
    let authorization = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let admitted = admit(gateway, route, peer, authorization, length, now).await;
    let (response, upstream) = match admitted {
        Ok(caller) => relay(gateway, service, route, peer, caller, request, now).await,
        Err(problem) => (local(problem), None),
    };
    here.metrics.record(service, Some(route), upstream, response.status(), started.elapsed());
    response
}

/// Limits, authentication and authorization: who is calling, if allowed
/// (`authorization` as the client sent it, `content_length` when it declared one).
pub(crate) async fn admit(
    gateway: &Gateway,
    route: &Route,
    peer: &Peer,
    authorization: Option<&[u8]>,
    content_length: Option<u64>,
    now: SystemTime,
) -> Result<Option<Rc<Verified>>, Problem> {
    gateway.limits.check_address(peer.addr.ip())?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let caller = match authorization {
        Some(authorization) => match gateway.verifier.verify_header(&peer.last_token, authorization, now).await {
            Ok(verified) => verified,
            // A stale token sent to a public route (a login page, say) is ignored.
            Err(_) if route.rule.public => None,
            Err(problem) => return Err(problem),
        },
        None => None,
    };
    route.rule.check(caller.as_ref().map(|c| &*c.identity)).inspect_err(|p| {
        tracing::debug!(route = %route.label, status = p.status.as_u16(), "refused at the gateway");
    })?;
    if let Some(caller) = &caller {
        gateway.limits.check_user(&caller.identity.sub)?;
    }
    if content_length.is_some_and(|len| len > gateway.settings.body_limit as u64) {
        return Err(too_large_problem());
    }
    Ok(caller)
}

pub(crate) fn too_large_problem() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, ProblemCode::PayloadTooLarge, "the request body is too large")
}

pub(crate) fn no_healthy_instance(service: &Service) -> Problem {
    Problem::unavailable(format!("{} has no healthy instance", service.name), 1)
}

pub(crate) fn unreachable(service: &Service) -> Problem {
    Problem::unavailable(format!("{} is unreachable", service.name), 1)
}

pub(crate) fn timed_out(service: &Service) -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        ProblemCode::GatewayTimeout,
        format!("{} did not answer in time", service.name),
    )
}

pub(crate) fn failed_to_answer(service: &Service) -> Problem {
    Problem::new(StatusCode::BAD_GATEWAY, ProblemCode::BadGateway, format!("{} failed to answer", service.name))
}

/// The identity proof for the backend: the caller (or an anonymous one) and
/// the client's address, over the method and the path the backend sees.
pub(crate) fn vouch(
    gateway: &Gateway,
    peer: &Peer,
    caller: Option<&Verified>,
    method: &Method,
    path_and_query: &str,
    now: SystemTime,
) -> HeaderValue {
    let key = &gateway.identity_key;
    let prepared = match caller {
        Some(caller) => caller.prepared_for(peer.addr.ip(), key),
        None => peer.anonymous(key),
    };
    key.sign_prepared_at(&prepared, method, path_and_query, now)
}

/// Sends the request to a healthy instance and relays the answer.
async fn relay<'s>(
    gateway: &Gateway,
    service: &'s Service,
    route: &Route,
    peer: &Peer,
    caller: Option<Rc<Verified>>,
    request: Request<Incoming>,
    now: SystemTime,
) -> (Response<GatewayBody>, Option<&'s Instance>) {
    let Some(mut instance) = service.pick(None).map(|i| &**i) else {
        return (local(no_healthy_instance(service)), None);
    };
    let (mut parts, body) = request.into_parts();
    let path_and_query = backend_path(parts.uri.path(), parts.uri.query(), service.prefix.len());
    rewrite_request_headers(&mut parts.headers, peer);
    let proof = vouch(gateway, peer, caller.as_deref(), &parts.method, &path_and_query, now);
    parts.headers.insert(IDENTITY_HEADER, proof);
    parts.uri = match Uri::try_from(path_and_query) {
        Ok(uri) => uri,
        Err(_) => return (local(Problem::not_found("no route for this path")), None),
    };
    // Whatever the client spoke, the gateway keeps its upstream connections alive.
    parts.version = Version::HTTP_11;
    let timeout = route.timeout.unwrap_or(Duration::from_millis(gateway.settings.timeout_ms));
    let body =
        if body.is_end_stream() { RequestBody::Empty } else { RequestBody::limited(body, gateway.settings.body_limit) };
    // Bodiless requests may be retried once on another instance when the
    // first cannot be reached (nothing was sent, so nothing happens twice).
    let retryable =
        service.instances.len() > 1 && matches!(parts.method, Method::GET | Method::HEAD) && body.is_end_stream();
    // The request head is kept for a retry only when one is possible.
    let mut spare = retryable.then(|| parts.clone());
    let mut next = Some(Request::from_parts(parts, body));
    loop {
        let mut outgoing = match next.take() {
            Some(request) => request,
            None => match spare.take() {
                Some(parts) => Request::from_parts(parts, RequestBody::Empty),
                None => return (local(unreachable(service)), Some(instance)),
            },
        };
        outgoing.headers_mut().insert(header::HOST, instance.host.clone());
        // Each attempt (a retry on another instance too) gets the whole timeout.
        let due = Instant::now() + timeout;
        let failure = match deadline::until(due, upstream::send(instance, outgoing)).await {
            Ok(Ok(response)) => {
                let (mut head, body) = response.into_parts();
                remove_hop_by_hop(&mut head.headers);
                return (Response::from_parts(head, GatewayBody::Upstream(body)), Some(instance));
            }
            Ok(Err(failure)) => failure,
            Err(_) => {
                tracing::warn!(service = %service.name, instance = %instance.url, ?timeout, "upstream timed out");
                return (local(timed_out(service)), Some(instance));
            }
        };
        match failure {
            Failure::Connect(err) => {
                tracing::warn!(service = %service.name, instance = %instance.url, error = %err, "instance unreachable");
                crate::health::mark(service, instance, false);
                match service.pick(Some(instance)).filter(|_| retryable) {
                    Some(other) => instance = other,
                    None => return (local(unreachable(service)), Some(instance)),
                }
            }
            failure if failure.is_too_large() => return (local(too_large_problem()), Some(instance)),
            Failure::Exchange(err) => {
                tracing::warn!(service = %service.name, instance = %instance.url, error = %err, "upstream failed");
                return (local(failed_to_answer(service)), Some(instance));
            }
        }
    }
}

/// The path and query the backend sees: the request's, without the prefix.
pub(crate) fn backend_path(path: &str, query: Option<&str>, prefix_len: usize) -> String {
    let rest = &path[prefix_len..];
    let rest = if rest.is_empty() { "/" } else { rest };
    match query {
        Some(query) => {
            let mut path = String::with_capacity(rest.len() + 1 + query.len());
            path.push_str(rest);
            path.push('?');
            path.push_str(query);
            path
        }
        None => rest.to_owned(),
    }
}

/// Removes what a client must not decide (identity headers, the bearer token,
/// hop-by-hop headers, the gateway's Host) and adds the forwarding headers.
fn rewrite_request_headers(headers: &mut HeaderMap, peer: &Peer) {
    // Nearly every request has neither kind: one look at the names first.
    if headers.keys().any(|name| is_identity_header(name.as_str()) || is_hop_by_hop(name)) {
        strip_identity_headers(headers);
        remove_hop_by_hop(headers);
    }
    // Backends trust the gateway's proof, not tokens: the token stops here.
    headers.remove(header::AUTHORIZATION);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    // A client's word on where it is, in any of the usual headers, is not
    // passed on: backends learn the address from the proof and this.
    headers.remove(header::FORWARDED);
    headers.remove(X_REAL_IP);
    headers.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Nearly every message has none: one look before any removal.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too.
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|name| HeaderName::try_from(name.trim()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let hop_by_hop: Vec<HeaderName> = headers.keys().filter(|name| is_hop_by_hop(name)).cloned().collect();
    for name in hop_by_hop {
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
        .header(REQUEST_ID, request_id)
        .body(axum::body::Body::empty())
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
