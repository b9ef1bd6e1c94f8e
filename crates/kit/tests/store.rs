//! Opening, migrating, checking and closing stores of both kinds.

use rewards_kit::health::CheckStatus;
use rewards_kit::store::{Migrations, Store, StoreKind, StoreOptions};
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use sqlx::migrate::Migrator;

static SQLITE: Migrator = sqlx::migrate!("./tests/migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./tests/migrations/postgres");
static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

store_tests!(migrates_and_reports_ready, reopening_keeps_the_data, a_closed_store_is_not_ready);

async fn migrates_and_reports_ready(test: TestStore) {
    let (store, info) = Store::open_and_migrate(&test.url, &StoreOptions::default(), &MIGRATIONS).await.unwrap();
    assert_eq!(store.kind(), test.kind);
    assert!(info.newly_created);
    assert_eq!(info.schema_version, 2);
    let check = store.check().await;
    assert_eq!(check.status, CheckStatus::Up);
    assert_eq!(check.details["kind"], test.kind.as_str());
    assert_eq!(check.details["schemaVersion"], 2);
    store.close().await;
}

async fn reopening_keeps_the_data(test: TestStore) {
    let options = StoreOptions::default();
    let (store, first) = Store::open_and_migrate(&test.url, &options, &MIGRATIONS).await.unwrap();
    insert_note(&store, "kept").await;
    store.close().await;

    let (store, second) = Store::open_and_migrate(&test.url, &options, &MIGRATIONS).await.unwrap();
    assert!(!second.newly_created);
    assert_eq!(second.created_at, first.created_at);
    let bodies: Vec<String> = match &store {
        Store::Sqlite(pool) => sqlx::query_scalar("SELECT body FROM notes").fetch_all(pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_scalar("SELECT body FROM notes").fetch_all(pool).await.unwrap(),
    };
    assert_eq!(bodies, ["kept"]);
    store.close().await;
}

async fn a_closed_store_is_not_ready(test: TestStore) {
    let (store, _) = Store::open_and_migrate(&test.url, &StoreOptions::default(), &MIGRATIONS).await.unwrap();
    store.close().await;
    assert_eq!(store.check().await.status, CheckStatus::Down);
}

async fn insert_note(store: &Store, body: &str) {
    match store {
        Store::Sqlite(pool) => {
            sqlx::query("INSERT INTO notes (body) VALUES (?)").bind(body).execute(pool).await.map(drop).unwrap()
        }
        Store::Postgres(pool) => {
            sqlx::query("INSERT INTO notes (body) VALUES ($1)").bind(body).execute(pool).await.map(drop).unwrap()
        }
    };
}

#[tokio::test]
async fn a_sqlite_store_creates_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("nested/deeper/x.db").display());
    let (store, _) = Store::open_and_migrate(&url, &StoreOptions::default(), &MIGRATIONS).await.unwrap();
    assert_eq!(store.kind(), StoreKind::Sqlite);
    assert!(dir.path().join("nested/deeper/x.db").exists());
    store.close().await;
}

#[tokio::test]
async fn unknown_schemes_and_unreachable_servers_are_clear_errors() {
    let err = Store::open("mysql://root:pw@127.0.0.1/x", &StoreOptions::default()).await.unwrap_err().to_string();
    assert!(err.contains("unsupported store URL") && !err.contains("pw"), "{err}");
    let options = StoreOptions { acquire_timeout: std::time::Duration::from_secs(1), ..StoreOptions::default() };
    let err = Store::open("postgres://u:secret@127.0.0.1:1/x", &options).await.unwrap_err().to_string();
    assert!(err.contains("could not open") && !err.contains("secret"), "{err}");
}
