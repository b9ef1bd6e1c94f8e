//! A gateway with a real auth service behind it, echo backends, and users of
//! every role.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::routing::{any, get};
use reqwest::{Method, RequestBuilder, StatusCode};
use rewards_auth::AuthSettings;
use rewards_gateway::{GatewaySettings, RegistryFile, ServiceSpec};
use rewards_kit::clock::SharedClock;
use rewards_kit::config::Secret;
use rewards_kit::identity::IdentityKey;
use rewards_kit::server::{Shutdown, bind_reuseport};
use rewards_kit::testing::{TestServer, TestStore};
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "gateway-admin-pw";

/// The size of the echo backend's `/big` answer.
pub const BIG_BODY: usize = 3 * 1024 * 1024;
/// The echo backend's `/stream` answer: this many chunks of 1,000 bytes.
pub const STREAM_CHUNKS: usize = 300;

/// A backend that answers with what it received and counts its requests.
pub struct Echo {
    pub server: TestServer,
    pub hits: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(name, listener).await
    }

    pub async fn start_on(name: &'static str, listener: tokio::net::TcpListener) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(|| async { axum::Json(json!({ "status": "ready", "checks": {} })) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "late"
                }),
            )
            .route(
                "/wait",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "waited"
                }),
            )
            .route("/big", get(|| async { vec![b'x'; BIG_BODY] }))
            .route(
                "/stream",
                get(|| async {
                    // No length: sent chunked, as it is made.
                    let chunks = (0..STREAM_CHUNKS).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&[b'z'; 1000])));
                    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route("/close", get(|| async { ([(http::header::CONNECTION, "close")], "closing") }))
            .fallback(any(move |request: Request| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let peer = request
                        .extensions()
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                        .map(|info| info.0.to_string());
                    let (parts, body) = request.into_parts();
                    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    let headers: serde_json::Map<String, Value> = parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or(""))))
                        .collect();
                    let request_ids: Vec<&str> =
                        parts.headers.get_all("x-request-id").iter().map(|v| v.to_str().unwrap_or("")).collect();
                    axum::Json(json!({
                        "instance": name,
                        "requestIds": request_ids,
                        "method": parts.method.as_str(),
                        "uri": parts.uri.to_string(),
                        "headers": headers,
                        "bodyLength": body.len(),
                        "peer": peer,
                    }))
                }
            }));
        Self { server: TestServer::spawn_on(listener, router).await, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The echo service's rules: one of each kind.
pub fn echo_spec(instances: Vec<String>) -> ServiceSpec {
    serde_json::from_value(json!({
        "name": "echo",
        "prefix": "/echo",
        "instances": instances,
        "routes": [
            { "method": "GET", "path": "/public", "public": true },
            { "method": "POST", "path": "/upload", "public": true },
            { "method": "GET", "path": "/items/{id}", "roles": ["USER", "OPERATOR", "AUDITOR", "ADMIN"] },
            { "method": "POST", "path": "/items", "roles": ["OPERATOR", "ADMIN"] },
            { "method": "GET", "path": "/admin-only", "roles": ["ADMIN"] },
            { "method": "GET", "path": "/slow", "roles": ["USER"], "timeoutMs": 200 },
            { "method": "GET", "path": "/wait", "public": true },
            { "method": "GET", "path": "/big", "public": true },
            { "method": "GET", "path": "/stream", "public": true },
            { "method": "GET", "path": "/close", "public": true },
        ]
    }))
    .unwrap()
}

/// The gateway serving on an ephemeral port, on two serving threads of its own.
pub struct GatewayUnderTest {
    pub base_url: String,
    pub client: reqwest::Client,
    shutdown: Shutdown,
}

impl GatewayUnderTest {
    pub fn spawn(server: rewards_gateway::GatewayServer) -> Self {
        let listeners = bind_reuseport("gateway", "127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let base_url = format!("http://{}", listeners[0].local_addr().unwrap());
        let shutdown = Shutdown::new();
        tokio::spawn(server.serve(listeners, shutdown.clone()));
        Self { base_url, client: reqwest::Client::new(), shutdown }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// The listening address, for raw TCP clients.
    pub fn addr(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    /// Begins the gateway's graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for GatewayUnderTest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct TestGateway {
    pub gateway: GatewayUnderTest,
    pub key: IdentityKey,
    pub auth: rewards_auth::AppState,
    _auth_server: TestServer,
    pub echo: Echo,
    _store: TestStore,
    /// What the gateway was built from, for [`TestGateway::another_instance`].
    settings: GatewaySettings,
    services: Vec<rewards_gateway::registry::ServiceSpec>,
}

pub struct Tokens {
    pub user: String,
    pub operator: String,
    pub auditor: String,
    pub admin: String,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut GatewaySettings)) -> Self {
        let store = TestStore::sqlite().await;
        let auth_settings = AuthSettings { admin_password: Secret::new(ADMIN_PASSWORD), ..AuthSettings::for_tests() };
        let auth = rewards_auth::open(&auth_settings, &store.url, SharedClock::system()).await.unwrap();
        let key = IdentityKey::generate();
        let auth_server = TestServer::spawn(rewards_auth::router(auth.clone(), key.clone())).await;
        let echo = Echo::start("echo-a").await;

        let mut settings = GatewaySettings {
            health_interval_ms: 100,
            rate_per_address: 0,
            rate_per_user: 0,
            auth_url: auth_server.base_url.clone(),
            ..GatewaySettings::default()
        };
        tweak(&mut settings);
        let mut services = RegistryFile::parse(rewards_gateway::DEFAULT_REGISTRY).unwrap().services;
        services.retain(|s| s.name == "auth-service");
        services[0].instances = vec![auth_server.base_url.clone()];
        services.push(echo_spec(vec![echo.server.base_url.clone()]));
        let server = rewards_gateway::build_with_registry(&settings, key.clone(), services.clone()).unwrap();
        let gateway = GatewayUnderTest::spawn(server);
        Self { gateway, key, auth, _auth_server: auth_server, echo, _store: store, settings, services }
    }

    /// A second gateway instance in front of the same services.
    pub fn another_instance(&self) -> GatewayUnderTest {
        let server =
            rewards_gateway::build_with_registry(&self.settings, self.key.clone(), self.services.clone()).unwrap();
        GatewayUnderTest::spawn(server)
    }

    pub fn call(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.gateway.client.request(method, self.gateway.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let response = self
            .call(Method::POST, "/auth-service/auth/login", None)
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login {username}");
        response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// Accounts of every role, registered through the gateway by the admin.
    pub async fn tokens(&self) -> Tokens {
        let admin = self.login("admin", ADMIN_PASSWORD).await;
        for (name, role) in [("gw_user", "USER"), ("gw_operator", "OPERATOR"), ("gw_auditor", "AUDITOR")] {
            let response = self
                .call(Method::POST, "/auth-service/users/register", Some(&admin))
                .json(&json!({ "username": name, "password": "password-123", "roles": [role] }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED, "register {name}");
        }
        Tokens {
            user: self.login("gw_user", "password-123").await,
            operator: self.login("gw_operator", "password-123").await,
            auditor: self.login("gw_auditor", "password-123").await,
            admin,
        }
    }
}

pub async fn problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}
