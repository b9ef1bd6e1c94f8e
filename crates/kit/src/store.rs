//! Stores opened by URL: `sqlite:<path>` (embedded, the default) or
//! `postgres://...` (production). Each service keeps its own migrations for
//! both kinds and its own storage code; the kit opens, migrates, checks and
//! closes the pool.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::health::Check;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A service's migrations, one set per engine (SQL differs between them).
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL `{0}`: use `sqlite:<path>` or `postgres://...`")]
    UnsupportedUrl(String),
    #[error("could not create the data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("could not open the store at {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("migrating the store at {url} failed: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    #[error("store error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// How long a request waits for a store connection by default, in
/// milliseconds: a store that cannot give one that soon is answered 503.
pub const DEFAULT_POOL_TIMEOUT_MS: u64 = 1_000;

/// How long `/ready` waits for the store's answer.
const READY_TIMEOUT: Duration = Duration::from_millis(800);

/// Pool sizing. SQLite allows one writer at a time whatever the pool size;
/// its extra connections serve concurrent readers (WAL mode).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout: Duration::from_millis(DEFAULT_POOL_TIMEOUT_MS) }
    }
}

/// An open connection pool to a service's store.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// What `/ready` and the startup log say about a store.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    pub created_at: DateTime<Utc>,
    pub schema_version: i64,
    pub newly_created: bool,
}

impl Store {
    /// Opens (creating the SQLite file and its directory when missing) without migrating.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { url: redact_url(url), source };
        match kind_of(url)? {
            StoreKind::Sqlite => {
                let connect = SqliteConnectOptions::from_str(url)
                    .map_err(open_err)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before we answer; a grant we
                    // acknowledged survives a power cut.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                let in_memory = connect.get_filename() == Path::new(":memory:");
                if !in_memory {
                    ensure_parent_dir(connect.get_filename())?;
                }
                // An in-memory database exists per connection: keep exactly one.
                let max = if in_memory { 1 } else { options.max_connections.max(1) };
                let pool = SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(open_err)?;
                Ok(Store::Sqlite(pool))
            }
            StoreKind::Postgres => {
                let connect = PgConnectOptions::from_str(url).map_err(open_err)?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await
                    .map_err(open_err)?;
                Ok(Store::Postgres(pool))
            }
        }
    }

    /// Opens and brings the schema up to date, then records when the store was
    /// first created (the service's first migration creates `store_info`).
    pub async fn open_and_migrate(
        url: &str,
        options: &StoreOptions,
        migrations: &Migrations,
    ) -> Result<(Self, StoreInfo), StoreError> {
        let store = Self::open(url, options).await?;
        store.migrate(url, migrations).await?;
        let info = store.init_info().await?;
        Ok((store, info))
    }

    pub async fn migrate(&self, url: &str, migrations: &Migrations) -> Result<(), StoreError> {
        let result = match self {
            Store::Sqlite(pool) => migrations.sqlite.run(pool).await,
            Store::Postgres(pool) => migrations.postgres.run(pool).await,
        };
        result.map_err(|source| StoreError::Migrate { url: redact_url(url), source })
    }

    async fn init_info(&self) -> Result<StoreInfo, StoreError> {
        let now = Utc::now();
        let inserted = match self {
            Store::Sqlite(pool) => {
                sqlx::query("INSERT INTO store_info (id, created_at) VALUES (1, ?) ON CONFLICT (id) DO NOTHING")
                    .bind(now)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Store::Postgres(pool) => {
                sqlx::query("INSERT INTO store_info (id, created_at) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
                    .bind(now)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        };
        let mut info = self.info().await?;
        info.newly_created = inserted == 1;
        Ok(info)
    }

    /// When the store was created and which migration it is at.
    pub async fn info(&self) -> Result<StoreInfo, StoreError> {
        const VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success";
        let (created_at, schema_version) = match self {
            Store::Sqlite(pool) => {
                let created: DateTime<Utc> =
                    sqlx::query_scalar("SELECT created_at FROM store_info WHERE id = 1").fetch_one(pool).await?;
                (created, sqlx::query_scalar::<_, i64>(VERSION).fetch_one(pool).await?)
            }
            Store::Postgres(pool) => {
                let created: DateTime<Utc> =
                    sqlx::query_scalar("SELECT created_at FROM store_info WHERE id = 1").fetch_one(pool).await?;
                (created, sqlx::query_scalar::<_, i64>(VERSION).fetch_one(pool).await?)
            }
        };
        Ok(StoreInfo { created_at, schema_version, newly_created: false })
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Sqlite(_) => StoreKind::Sqlite,
            Store::Postgres(_) => StoreKind::Postgres,
        }
    }

    /// One round trip to the store; its latency when it answers.
    pub async fn ping(&self) -> Result<Duration, sqlx::Error> {
        let started = Instant::now();
        match self {
            Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Store::Postgres(pool) => ping_postgres(pool).await?,
        }
        Ok(started.elapsed())
    }

    /// The store's part of `/ready`.
    pub async fn check(&self) -> Check {
        let kind = self.kind().as_str();
        let ping = tokio::time::timeout(READY_TIMEOUT, async {
            let latency = self.ping().await?;
            Ok::<_, sqlx::Error>((latency, self.info().await))
        })
        .await;
        match ping {
            Ok(Ok((latency, info))) => match info {
                Ok(info) => Check::up(json!({
                    "kind": kind,
                    "latencyMs": latency.as_secs_f64() * 1000.0,
                    "schemaVersion": info.schema_version,
                    "createdAt": info.created_at,
                })),
                Err(err) => Check::down(json!({ "kind": kind, "error": err.to_string() })),
            },
            Ok(Err(err)) => Check::down(json!({ "kind": kind, "error": err.to_string() })),
            Err(_) => Check::down(json!({ "kind": kind, "error": format!("no answer within {READY_TIMEOUT:?}") })),
        }
    }

    /// Waits for checked-out connections to return, then closes the pool
    /// (SQLite checkpoints its WAL on the last close).
    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// How long `/ready` waits for a pooled PostgreSQL connection before it
/// asks the server on a connection of its own.
const POOLED_PING_FOR: Duration = Duration::from_millis(150);

/// `SELECT 1` on a pooled connection, or, when none comes quickly, on a new
/// one. A pool keeps retrying a server that refuses connections until its
/// acquire timeout; a connection of its own hears the refusal at once, so a
/// stopped server is reported down in milliseconds, while a pool that is
/// only busy is not mistaken for a store that is down.
async fn ping_postgres(pool: &PgPool) -> Result<(), sqlx::Error> {
    let pooled = tokio::time::timeout(POOLED_PING_FOR, sqlx::query("SELECT 1").execute(pool)).await;
    match pooled {
        Ok(done) => done.map(drop),
        Err(_) => {
            use sqlx::Connection;
            let mut own = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
            sqlx::query("SELECT 1").execute(&mut own).await?;
            let _ = own.close().await;
            Ok(())
        }
    }
}

/// Which engine a URL names.
pub fn kind_of(url: &str) -> Result<StoreKind, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(StoreKind::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(StoreKind::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// The SQLite URL of a file in a data directory.
pub fn sqlite_url(data_dir: &Path, file: &str) -> String {
    format!("sqlite:{}", data_dir.join(file).display())
}

/// A URL safe to log: any password is replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            let shown = if credentials.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{scheme}://{shown}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

fn ensure_parent_dir(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::DataDir { dir: dir.display().to_string(), source }),
        _ => Ok(()),
    }
}

/// Runs the same sqlx code against whichever pool a [`Store`] holds. Queries
/// are written once with `$1, $2, ...` placeholders, which both SQLite and
/// PostgreSQL understand; `$body` is compiled once per engine.
#[macro_export]
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a write transaction named `$tx` and commits it when
/// `$body` completes; an early return (`?`) rolls back. SQLite begins with
/// `BEGIN IMMEDIATE`, taking the write lock up front: a deferred transaction
/// that reads and then writes fails with "database is locked" under load.
#[macro_export]
macro_rules! with_write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite(pool) => {
                #[allow(unused_mut)]
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::store::Store::Postgres(pool) => {
                #[allow(unused_mut)]
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

/// Whether an error says the store could not be reached or lost the
/// connection (rather than refusing a statement): the pool gave up waiting,
/// a socket failed, or the server is shutting down, starting up or full.
/// Nothing was done by a statement that failed so — except a commit, whose
/// fate is then unknown.
pub fn is_unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            // PostgreSQL: connection exceptions (08...), shutdowns and
            // restarts (57P01-57P03), too many connections (53300).
            Some(code) if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() => {
                code.starts_with("08") || ["57P01", "57P02", "57P03", "53300"].contains(&code.as_ref())
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether an error is a unique-constraint violation (a duplicate the
/// database refused), on either engine.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/auth"), "postgres://app:***@db:5432/auth");
        assert_eq!(redact_url("postgres://app@db/auth"), "postgres://app@db/auth");
        assert_eq!(redact_url("postgres://db/auth?sslmode=disable"), "postgres://db/auth?sslmode=disable");
        assert_eq!(redact_url("sqlite:./data/auth.db"), "sqlite:./data/auth.db");
        assert_eq!(redact_url("postgres://u:p@ss@db/x"), "postgres://u:***@db/x");
    }

    #[test]
    fn urls_select_the_engine() {
        assert_eq!(kind_of("sqlite:./data/a.db").unwrap(), StoreKind::Sqlite);
        assert_eq!(kind_of("sqlite::memory:").unwrap(), StoreKind::Sqlite);
        assert_eq!(kind_of("postgres://localhost/test").unwrap(), StoreKind::Postgres);
        assert_eq!(kind_of("postgresql://localhost/test").unwrap(), StoreKind::Postgres);
        let err = kind_of("mysql://root:pw@localhost/test").unwrap_err().to_string();
        assert!(err.contains("mysql://root:***@localhost/test"), "{err}");
    }
}
