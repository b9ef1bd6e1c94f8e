//! The gateway in front of real backends on ephemeral ports.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::{any, get};
use reqwest::StatusCode;
use rewards_gateway::GatewaySettings;
use rewards_kit::identity::IdentityKey;
use rewards_kit::testing::TestServer;
use serde_json::{Value, json};

/// A backend that answers with what it received.
fn echo_backend(name: &'static str) -> Router {
    Router::new()
        .route("/ready", get(|| async { axum::Json(json!({ "status": "ready", "checks": {} })) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .fallback(any(move |request: Request| async move {
            let (parts, body) = request.into_parts();
            let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            axum::Json(json!({
                "service": name,
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "headers": headers_json(&parts.headers),
                "body": String::from_utf8_lossy(&body),
            }))
        }))
}

fn headers_json(headers: &HeaderMap) -> Value {
    headers.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("")))).collect()
}

struct Setup {
    gateway: TestServer,
    key: IdentityKey,
    _auth: Option<TestServer>,
    _events: TestServer,
}

async fn setup(auth_up: bool, tweak: impl FnOnce(&mut GatewaySettings)) -> Setup {
    let events = TestServer::spawn(echo_backend("events")).await;
    let (auth, auth_url) = if auth_up {
        let auth = TestServer::spawn(echo_backend("auth")).await;
        let url = auth.base_url.clone();
        (Some(auth), url)
    } else {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        (None, url)
    };
    let mut settings = GatewaySettings { auth_url, events_url: events.base_url.clone(), ..GatewaySettings::default() };
    tweak(&mut settings);
    let key = IdentityKey::generate();
    let router = rewards_gateway::router(&settings, key.clone()).unwrap();
    Setup { gateway: TestServer::spawn(router).await, key, _auth: auth, _events: events }
}

#[tokio::test]
async fn forwards_under_the_prefix_with_the_prefix_removed() {
    let s = setup(true, |_| {}).await;
    let response = s
        .gateway
        .client
        .post(s.gateway.url("/event-service/events/42?limit=5&cursor=abc"))
        .header("x-request-id", "trace-me-1")
        .json(&json!({ "name": "launch" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "trace-me-1");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["service"], "events");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/events/42?limit=5&cursor=abc");
    assert_eq!(seen["body"], r#"{"name":"launch"}"#);
    assert_eq!(seen["headers"]["x-request-id"], "trace-me-1", "the backend logs the same request id");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");

    let seen: Value = s.gateway.client.get(s.gateway.url("/auth-service")).send().await.unwrap().json().await.unwrap();
    assert_eq!((seen["service"].as_str(), seen["uri"].as_str()), (Some("auth"), Some("/")));
}

#[tokio::test]
async fn client_identity_and_hop_by_hop_headers_never_reach_a_backend() {
    let s = setup(true, |_| {}).await;
    let seen: Value = s
        .gateway
        .client
        .get(s.gateway.url("/auth-service/users/me"))
        .header("X-User-Id", "admin")
        .header("X-User-Roles", "ADMIN")
        .header("X-Rewards-Identity", "v1.forged")
        .header("X-Internal-Token", "guess")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("Connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "1")
        .header("te", "trailers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = seen["headers"].as_object().unwrap();
    for name in ["x-user-id", "x-user-roles", "x-internal-token", "x-secret-hop", "te", "connection"] {
        assert!(!headers.contains_key(name), "{name} was forwarded: {headers:?}");
    }
    // The only identity header a backend sees is the gateway's own proof:
    // anonymous here, with the client's address.
    let proof = headers["x-rewards-identity"].as_str().unwrap();
    let vouched = s.key.verify(&http::Method::GET, "/users/me", proof.as_bytes()).expect("the gateway's proof");
    assert_eq!(vouched.caller, None);
    assert_eq!(vouched.client_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "a client-sent X-Forwarded-For is replaced");
}

#[tokio::test]
async fn paths_outside_every_prefix_are_404_problems() {
    let s = setup(true, |_| {}).await;
    for path in ["/nope", "/auth-servicex/auth/login", "/event-services/events", "/"] {
        let response = s.gateway.client.get(s.gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "NOT_FOUND");
    }
}

#[tokio::test]
async fn an_unreachable_backend_is_503_and_makes_the_gateway_unready() {
    let s = setup(false, |_| {}).await;
    let response = s.gateway.client.get(s.gateway.url("/auth-service/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "SERVICE_UNAVAILABLE");

    let response = s.gateway.client.get(s.gateway.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "liveness does not depend on backends");

    let response = s.gateway.client.get(s.gateway.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["auth-service"]["status"], "down");
    assert_eq!(body["checks"]["event-service"]["status"], "up");
}

#[tokio::test]
async fn ready_reports_every_backend() {
    let s = setup(true, |_| {}).await;
    let response = s.gateway.client.get(s.gateway.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["auth-service"]["status"], "up");
    assert_eq!(body["checks"]["event-service"]["status"], "up");
}

#[tokio::test]
async fn a_slow_backend_is_504() {
    let s = setup(true, |settings| settings.timeout_ms = 200).await;
    let started = std::time::Instant::now();
    let response = s.gateway.client.get(s.gateway.url("/event-service/slow")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "GATEWAY_TIMEOUT");
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let s = setup(true, |settings| settings.body_limit = 1000).await;
    let response =
        s.gateway.client.post(s.gateway.url("/event-service/activities")).body("x".repeat(5000)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");
}
