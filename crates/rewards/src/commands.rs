//! What each subcommand does.

use rewards_kit::clock::SharedClock;
use rewards_kit::identity::IdentityKey;
use rewards_kit::server::{self, Shutdown};
use rewards_kit::service;
use rewards_kit::store::{self, Store};
use tokio::task::JoinHandle;

use crate::settings::Settings;

type Task = JoinHandle<anyhow::Result<()>>;

/// All three services in one process. Listeners are bound first (a busy port
/// fails the start before anything is opened); the gateway is pointed at its
/// siblings' actual addresses. On SIGINT/SIGTERM the gateway drains first, then
/// the services, then their stores close.
pub async fn up(mut settings: Settings) -> anyhow::Result<()> {
    let key = settings.identity_key_or_generate()?;
    let gateway_listeners =
        server::bind_reuseport(rewards_gateway::NAME, settings.gateway.listen, settings.gateway.serving_threads())?;
    let auth_listener = server::bind(rewards_auth::NAME, settings.auth.listen).await?;
    let events_listener = server::bind(rewards_events::NAME, settings.events.listen).await?;
    let auth_addr = auth_listener.local_addr()?;
    let events_addr = events_listener.local_addr()?;
    let gateway_addr = gateway_listeners[0].local_addr()?;
    settings.gateway.auth_url = format!("http://{auth_addr}");
    settings.gateway.events_url = format!("http://{events_addr}");
    settings.auth.events_url = format!("http://{events_addr}");
    // In one process the gateway expects exactly the tokens its auth signs.
    settings.gateway.issuer = settings.auth.issuer.clone();
    settings.gateway.audience = settings.auth.audience.clone();

    let auth = rewards_auth::open(&settings.auth, &settings.auth_database_url(), SharedClock::system()).await?;
    let events = rewards_events::open(&settings.events, &settings.events_database_url(), SharedClock::system()).await?;

    let front = Shutdown::new();
    let back = Shutdown::new();
    server::cancel_on_signals(front.clone());

    let gateway = rewards_gateway::build(&settings.gateway, key.clone())?;
    let auth_router = rewards_auth::router(auth.clone(), key.clone());
    let events_router = rewards_events::router(events.clone(), key.clone());

    tokio::spawn(outbox(&auth, &key, &settings).run(back.clone()));
    tokio::spawn(rewards_events::payout::Dispatcher::new(events.clone()).run(back.clone()));
    let gateway_task: Task = tokio::spawn(gateway.serve(gateway_listeners, front.clone()));
    let backend_tasks: Vec<Task> = vec![
        spawn_backend(
            service::run(rewards_auth::NAME, auth_listener, auth_router, auth.store().clone(), back.clone()),
            &front,
        ),
        spawn_backend(
            service::run(rewards_events::NAME, events_listener, events_router, events.store().clone(), back.clone()),
            &front,
        ),
    ];
    tracing::info!(
        gateway = %format!("http://{gateway_addr}"),
        auth = %format!("http://{auth_addr}"),
        events = %format!("http://{events_addr}"),
        data_dir = %settings.data_dir.display(),
        "rewards is up; try `curl http://{gateway_addr}/health`"
    );

    // The gateway returns once it has drained after a signal (or once a
    // backend has failed); only then do the backends stop.
    let mut failure = flatten(gateway_task.await).err();
    back.cancel();
    for task in backend_tasks {
        if let Err(err) = flatten(task.await) {
            failure.get_or_insert(err);
        }
    }
    match failure {
        Some(err) => Err(err),
        None => {
            tracing::info!("rewards stopped cleanly");
            Ok(())
        }
    }
}

/// A backend that stops on its own (it failed) takes the platform down with
/// it, rather than leaving a gateway that answers 503 forever.
fn spawn_backend(run: impl Future<Output = anyhow::Result<()>> + Send + 'static, front: &Shutdown) -> Task {
    let front = front.clone();
    tokio::spawn(async move {
        let result = run.await;
        front.cancel();
        result
    })
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.map_err(anyhow::Error::from).and_then(|r| r)
}

/// The gateway alone (its backends configured by URL).
pub async fn gateway(settings: Settings) -> anyhow::Result<()> {
    let key = settings.identity_key()?;
    let listeners =
        server::bind_reuseport(rewards_gateway::NAME, settings.gateway.listen, settings.gateway.serving_threads())?;
    let gateway = rewards_gateway::build(&settings.gateway, key)?;
    let shutdown = Shutdown::new();
    server::cancel_on_signals(shutdown.clone());
    tracing::info!(listen = %listeners[0].local_addr()?, threads = listeners.len(), "gateway listening");
    gateway.serve(listeners, shutdown).await
}

/// The auth service alone.
pub async fn auth(settings: Settings) -> anyhow::Result<()> {
    let key = settings.identity_key()?;
    let listener = server::bind(rewards_auth::NAME, settings.auth.listen).await?;
    let state = rewards_auth::open(&settings.auth, &settings.auth_database_url(), SharedClock::system()).await?;
    let router = rewards_auth::router(state.clone(), key.clone());
    let shutdown = Shutdown::new();
    tokio::spawn(outbox(&state, &key, &settings).run(shutdown.clone()));
    let result = run_alone(rewards_auth::NAME, listener, router, state.store().clone()).await;
    shutdown.cancel();
    result
}

/// The dispatcher of the auth service's LOGIN and SIGNUP activities.
fn outbox(auth: &rewards_auth::AppState, key: &IdentityKey, settings: &Settings) -> rewards_auth::outbox::Dispatcher {
    let poll = std::time::Duration::from_millis(settings.auth.outbox_poll_ms.max(10));
    rewards_auth::outbox::Dispatcher::new(auth.db.clone(), key.clone(), &settings.auth.events_url, poll)
}

/// The events service alone.
pub async fn events(settings: Settings) -> anyhow::Result<()> {
    let key = settings.identity_key()?;
    let listener = server::bind(rewards_events::NAME, settings.events.listen).await?;
    let state = rewards_events::open(&settings.events, &settings.events_database_url(), SharedClock::system()).await?;
    let router = rewards_events::router(state.clone(), key);
    let shutdown = Shutdown::new();
    tokio::spawn(rewards_events::payout::Dispatcher::new(state.clone()).run(shutdown.clone()));
    let result = run_alone(rewards_events::NAME, listener, router, state.store().clone()).await;
    shutdown.cancel();
    result
}

async fn run_alone(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    store: Store,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    server::cancel_on_signals(shutdown.clone());
    tracing::info!(service = name, listen = %listener.local_addr()?, "{name} listening");
    service::run(name, listener, router, store, shutdown).await
}

/// Adds a new access-token signing key. It is published at once and signs
/// after the configured lead time; the current key stays published until the
/// tokens it signed have expired.
pub async fn rotate_keys(settings: &Settings) -> anyhow::Result<()> {
    let url = settings.auth_database_url();
    let store =
        service::open_store(rewards_auth::NAME, &url, &settings.auth.store_options(), &rewards_auth::MIGRATIONS)
            .await?;
    let db = rewards_auth::store::AuthStore::new(store.clone());
    let lead = chrono::Duration::seconds(settings.auth.key_publish_lead_secs as i64);
    let key = rewards_auth::keys::rotate(&db, chrono::Utc::now(), lead).await?;
    println!(
        "added signing key {}: published now, signs from {} (running auth services pick it up within {} s)",
        key.kid,
        rewards_auth::keys::active_from(&key).to_rfc3339(),
        settings.auth.key_reload_secs
    );
    store.close().await;
    Ok(())
}

/// Brings the chosen stores' schemas up to date without serving.
pub async fn migrate(settings: &Settings, auth: bool, events: bool) -> anyhow::Result<()> {
    if auth {
        let url = settings.auth_database_url();
        let store =
            service::open_store(rewards_auth::NAME, &url, &settings.auth.store_options(), &rewards_auth::MIGRATIONS)
                .await?;
        report_migrated(rewards_auth::NAME, &url, &store).await?;
    }
    if events {
        let url = settings.events_database_url();
        let store = service::open_store(
            rewards_events::NAME,
            &url,
            &settings.events.store_options(),
            &rewards_events::MIGRATIONS,
        )
        .await?;
        report_migrated(rewards_events::NAME, &url, &store).await?;
    }
    Ok(())
}

async fn report_migrated(name: &str, url: &str, store: &Store) -> anyhow::Result<()> {
    let info = store.info().await?;
    println!("{name}: {} is at schema version {}", store::redact_url(url), info.schema_version);
    store.close().await;
    Ok(())
}
