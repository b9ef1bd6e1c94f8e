//! Test support: fresh stores of either kind and services on port 0, so
//! integration tests speak real HTTP to real databases.
//!
//! PostgreSQL tests run when `REWARDS_TEST_POSTGRES_URL` names a database the
//! tests may create schemas in (each test gets its own schema, dropped after
//! it). Without it they are skipped, and say so on the terminal.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Once;

use axum::Router;
use sqlx::Connection;
use tokio::net::TcpListener;

use crate::server::{self, Shutdown};
use crate::store::StoreKind;

/// The environment variable naming the PostgreSQL test database.
pub const POSTGRES_URL_ENV: &str = "REWARDS_TEST_POSTGRES_URL";

/// Runs each listed `async fn name(store: TestStore)` once per store kind, as
/// the tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::testing::TestStore::sqlite().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(store) = $crate::testing::TestStore::postgres().await {
                        super::$name(store).await;
                    }
                }
            }
        )+
    };
}

/// A store that exists for one test.
pub struct TestStore {
    pub kind: StoreKind,
    /// The URL a service opens it with.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestStore {
    /// A fresh SQLite file in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = crate::store::sqlite_url(dir.path(), "test.db");
        Self { kind: StoreKind::Sqlite, url, _dir: Some(dir), pg_schema: None }
    }

    /// A fresh schema in the PostgreSQL test database, or `None` (with a
    /// notice on the terminal) when no test database is configured.
    pub async fn postgres() -> Option<Self> {
        let Some(base) = postgres_url() else {
            announce_postgres_skipped();
            return None;
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_ENV} is set but PostgreSQL does not answer: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.expect("create test schema");
        conn.close().await.ok();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(Self { kind: StoreKind::Postgres, url, _dir: None, pg_schema: Some((base, schema)) })
    }

    /// A fresh store of `kind`; `None` when that kind is not available here.
    pub async fn of(kind: StoreKind) -> Option<Self> {
        match kind {
            StoreKind::Sqlite => Some(Self::sqlite().await),
            StoreKind::Postgres => Self::postgres().await,
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some((base, schema)) = self.pg_schema.take() else { return };
        // Drop runs inside the test's runtime; do the async cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The PostgreSQL test database URL, when configured.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_ENV).ok().filter(|s| !s.trim().is_empty())
}

/// Writes straight to the process's stderr (the test harness captures only
/// `eprintln!`), once per test binary, so a skipped suite is never silent.
fn announce_postgres_skipped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** PostgreSQL tests SKIPPED in this test binary: set {POSTGRES_URL_ENV}=postgres://... to run them ***\n"
        );
    });
}

/// A service serving real HTTP on an ephemeral port for one test.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub client: reqwest::Client,
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Serves `router` on `127.0.0.1:0`.
    pub async fn spawn(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        Self::spawn_on(listener, router).await
    }

    /// Serves `router` on a listener the test bound itself.
    pub async fn spawn_on(listener: TcpListener, router: Router) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let shutdown = Shutdown::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                server::serve("test", listener, router, shutdown).await.expect("test server");
            }
        });
        Self { addr, base_url: format!("http://{addr}"), client: reqwest::Client::new(), shutdown, task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Stops serving and waits for in-flight requests to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The operational contract every store-backed service keeps, checked over
/// HTTP: liveness, readiness naming the store, problem+json for unknown paths,
/// and a forged identity proof refused on any route.
pub async fn assert_ops_contract(server: &TestServer, store: &TestStore) {
    use serde_json::Value;

    let health = server.client.get(server.url("/health")).send().await.expect("GET /health");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(health.json::<Value>().await.unwrap(), serde_json::json!({ "status": "ok" }));

    let ready = server.client.get(server.url("/ready")).send().await.expect("GET /ready");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"]["status"], "up");
    assert_eq!(body["checks"]["store"]["kind"], store.kind.as_str());
    assert!(body["checks"]["store"]["schemaVersion"].as_i64().unwrap() >= 1);

    let missing = server.client.get(server.url("/no/such/path")).send().await.unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], crate::problem::PROBLEM_JSON);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "NOT_FOUND");

    let forged = server
        .client
        .get(server.url("/health"))
        .header(crate::identity::IDENTITY_HEADER, "v1.0.e30.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::UNAUTHORIZED);
}

/// `/ready` of a service whose store has gone away.
pub async fn assert_unready(server: &TestServer) {
    let ready = server.client.get(server.url("/ready")).send().await.expect("GET /ready");
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["store"]["status"], "down");
}

/// Sends `n` requests released together by a barrier (real concurrency, real
/// HTTP); returns each answer's status and JSON body.
pub async fn all_at_once(
    n: usize,
    make: impl Fn(usize) -> reqwest::RequestBuilder,
) -> Vec<(reqwest::StatusCode, serde_json::Value)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let request = make(i);
            tokio::spawn(async move {
                barrier.wait().await;
                let response = request.send().await.expect("the request reaches the server");
                let status = response.status();
                (status, response.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null))
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("request task"));
    }
    results
}

/// How many answers have `status` (and, when given, problem `code`).
pub fn count(
    results: &[(reqwest::StatusCode, serde_json::Value)],
    status: reqwest::StatusCode,
    code: Option<&str>,
) -> usize {
    results.iter().filter(|(s, b)| *s == status && code.is_none_or(|c| b["code"] == c)).count()
}
