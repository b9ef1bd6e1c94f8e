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

/// A fault to inject at the next PostgreSQL `COMMIT` through a [`FaultProxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitFault {
    /// Forward the `COMMIT`, swallow the server's reply, then cut the
    /// connection: the transaction committed, and the client never hears so.
    LoseReply,
    /// Cut the connection instead of forwarding the `COMMIT`: the server sees
    /// its client vanish mid-transaction and rolls back.
    DropBefore,
}

/// What a [`FaultProxy`] and its connections share.
#[derive(Debug, Default)]
struct ProxyFaults {
    /// Faults armed, the first for the next `COMMIT` seen on any connection.
    armed: std::sync::Mutex<std::collections::VecDeque<CommitFault>>,
    /// How many armed faults have fired.
    fired: std::sync::atomic::AtomicUsize,
}

impl ProxyFaults {
    fn take(&self) -> Option<CommitFault> {
        self.armed.lock().expect("proxy faults").pop_front()
    }
}

/// A PostgreSQL simple-query message carrying exactly `COMMIT`: type `Q`, the
/// length (itself included: 4 + 7), the text and its NUL. sqlx commits with
/// this message (its transaction manager sends the bare `COMMIT` as a simple
/// query).
const COMMIT_MESSAGE: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
/// The server's `ReadyForQuery` (type `Z`, length 5, then the status byte):
/// the last message of its reply to a simple query.
const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A TCP proxy in front of PostgreSQL that can break the connection at the
/// next `COMMIT`, to see what a service does when a commit's fate is unknown.
///
/// Every connection to [`FaultProxy::addr`] is forwarded, in both directions,
/// to the upstream address. Armed (see [`FaultProxy::lose_next_commit_reply`]
/// and [`FaultProxy::drop_before_next_commit`]), the first connection that
/// sends a `COMMIT` meets the fault; each arming serves one `COMMIT`.
///
/// The client→server bytes are scanned a chunk (one read) at a time: a
/// `COMMIT` message split across two reads would be missed. sqlx writes each
/// small message in one write, so in practice the 12 bytes arrive together.
/// The proxy assumes plaintext connections (sqlx as built here has no TLS).
pub struct FaultProxy {
    addr: SocketAddr,
    faults: std::sync::Arc<ProxyFaults>,
    /// The accept loop; it owns the connections' tasks, so aborting it
    /// (on drop) cuts every connection.
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let faults = std::sync::Arc::new(ProxyFaults::default());
        let task = tokio::spawn({
            let faults = faults.clone();
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    // Reap finished connections so the set does not grow.
                    while connections.try_join_next().is_some() {}
                    connections.spawn(proxy_connection(client, upstream, faults.clone()));
                }
            }
        });
        Self { addr, faults, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (`scheme://[user[:password]@]host:port/...`) with its host and
    /// port replaced by the proxy's.
    pub fn route(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let userinfo = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        format!("{scheme}://{userinfo}{}{tail}", self.addr)
    }

    /// The next `COMMIT` reaches the server and commits, but its reply is
    /// swallowed and the connection cut: the client cannot know it committed.
    pub fn lose_next_commit_reply(&self) {
        self.arm(CommitFault::LoseReply);
    }

    /// The connection is cut just before the next `COMMIT` would be
    /// forwarded: the server rolls the transaction back.
    pub fn drop_before_next_commit(&self) {
        self.arm(CommitFault::DropBefore);
    }

    fn arm(&self, fault: CommitFault) {
        self.faults.armed.lock().expect("proxy faults").push_back(fault);
    }

    /// How many armed faults have fired.
    pub fn fired(&self) -> usize {
        self.faults.fired.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The socket address a database URL's host and port name.
pub async fn upstream_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    tokio::net::lookup_host(&host_port)
        .await
        .unwrap_or_else(|e| panic!("resolve {host_port}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{host_port} resolves to no address"))
}

/// Forwards one connection until either side closes or a fault cuts it.
async fn proxy_connection(client: tokio::net::TcpStream, upstream: SocketAddr, faults: std::sync::Arc<ProxyFaults>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // Set by either direction to end both (and so close both sockets).
    let cut = tokio_util::sync::CancellationToken::new();
    // Set (before the COMMIT is forwarded) when its reply is to be swallowed.
    let swallow = std::sync::Arc::new(AtomicBool::new(false));

    let upward = {
        let (cut, swallow, faults) = (cut.clone(), swallow.clone(), faults.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::select! {
                    _ = cut.cancelled() => return,
                    read = client_rx.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                let chunk = &buf[..n];
                if contains(chunk, COMMIT_MESSAGE)
                    && let Some(fault) = faults.take()
                {
                    faults.fired.fetch_add(1, Ordering::AcqRel);
                    match fault {
                        CommitFault::DropBefore => break,
                        // The reply is swallowed downstream; this side just
                        // forwards the COMMIT and waits to be cut.
                        CommitFault::LoseReply => swallow.store(true, Ordering::Release),
                    }
                }
                if server_tx.write_all(chunk).await.is_err() {
                    break;
                }
            }
            cut.cancel();
        }
    };

    let downward = {
        let cut = cut.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::select! {
                    _ = cut.cancelled() => return,
                    read = server_rx.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                let chunk = &buf[..n];
                // The client waits for each reply before it sends the next
                // message, so whatever the server sends after the COMMIT
                // arrived is the COMMIT's reply: swallow it, up to its
                // ReadyForQuery (by then the server has committed), then cut.
                if swallow.load(Ordering::Acquire) {
                    if contains(chunk, READY_FOR_QUERY) {
                        break;
                    }
                    continue;
                }
                if client_tx.write_all(chunk).await.is_err() {
                    break;
                }
            }
            cut.cancel();
        }
    };

    // Both halves of both sockets are dropped when this returns: both closed.
    tokio::join!(upward, downward);
}
