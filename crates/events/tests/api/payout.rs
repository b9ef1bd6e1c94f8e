//! The approval workflow and payout: built-in ledger, a flaky webhook, a
//! dead one that recovers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use reqwest::{Method, StatusCode};
use rewards_events::EventsSettings;
use rewards_events::payout::Dispatcher;
use rewards_kit::identity::Role;
use rewards_kit::server::Shutdown;
use rewards_kit::store_tests;
use rewards_kit::testing::{TestServer, TestStore};
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    approval_rejection_and_the_built_in_ledger,
    a_flaky_webhook_still_gets_every_grant_once,
    a_dead_webhook_leaves_failed_claims_that_a_retry_delivers,
    a_new_grant_is_paid_at_once_without_waiting_for_the_poll,
);

async fn event_with(events: &TestEvents, reward: Value) -> (String, String) {
    let mut body = weekly("payout");
    body["condition"] = json!({ "type": "none" });
    let event = events.event(body).await;
    let mut reward = reward;
    reward["eventId"] = event["id"].clone();
    let reward = events.reward(reward).await;
    (event["id"].as_str().unwrap().to_owned(), reward["id"].as_str().unwrap().to_owned())
}

async fn claim_as(events: &TestEvents, name: &str, event: &str, reward: &str) -> Value {
    let who = who(name, &[Role::User]);
    let response = events
        .send(Method::POST, "/reward-claims", Some(&who), Some(json!({ "eventId": event, "rewardId": reward })))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn status_of(events: &TestEvents, id: &str) -> String {
    let claim: Value =
        events.send(Method::GET, &format!("/reward-claims/{id}"), Some(&operator()), None).await.json().await.unwrap();
    claim["status"].as_str().unwrap().to_owned()
}

async fn wait_for(events: &TestEvents, ids: &[String], status: &str) {
    let started = std::time::Instant::now();
    for id in ids {
        while status_of(events, id).await != status {
            assert!(started.elapsed() < Duration::from_secs(30), "{id} never became {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn dispatch(events: &TestEvents) -> Shutdown {
    let shutdown = Shutdown::new();
    tokio::spawn(Dispatcher::new(events.state.clone()).run(shutdown.clone()));
    shutdown
}

async fn approval_rejection_and_the_built_in_ledger(store: TestStore) {
    let settings = EventsSettings { payout_poll_ms: 20, ..EventsSettings::default() };
    let events = TestEvents::start_with(store, settings).await;
    let stop = dispatch(&events);
    let (event, instant) = event_with(
        &events,
        json!({ "name": "Gold", "type": "CURRENCY", "details": { "currency": "gold" }, "quantity": 50 }),
    )
    .await;
    let (_, reviewed) = event_with(&events, json!({ "name": "Rare", "type": "ITEM", "details": { "itemId": "rare" }, "quantity": 1, "stock": 2, "requiresApproval": true })).await;
    let reviewed_event: Value =
        events.send(Method::GET, &format!("/rewards/{reviewed}"), Some(&operator()), None).await.json().await.unwrap();
    let reviewed_event = reviewed_event["eventId"].as_str().unwrap().to_owned();

    // Granted and paid into the ledger at once: one claim row, no transition
    // rows, no outbox row; its history is read from the claim itself.
    let granted = claim_as(&events, "pat", &event, &instant).await;
    assert_eq!(granted["status"], "PAID");
    let id = granted["id"].as_str().unwrap().to_owned();
    let rows: (i64, i64) = rewards_kit::with_pool!(events.state.store(), |pool| {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM claim_transitions WHERE claim_id = $1), \
                    (SELECT COUNT(*) FROM payouts WHERE claim_id = $1)",
        )
        .bind(&id)
        .fetch_one(pool)
        .await
        .unwrap()
    });
    assert_eq!(rows, (0, 0));
    let history: Value = events
        .send(Method::GET, &format!("/reward-claims/{id}/transitions"), Some(&who("pat", &[Role::User])), None)
        .await
        .json()
        .await
        .unwrap();
    let steps: Vec<(Value, Value, Value)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["fromStatus"].clone(), t["toStatus"].clone(), t["actorId"].clone()))
        .collect();
    assert_eq!(
        steps,
        [(Value::Null, json!("APPROVED"), json!("id-pat")), (json!("APPROVED"), json!("PAID"), json!("ledger"))]
    );
    problem(
        events
            .send(Method::GET, &format!("/reward-claims/{id}/transitions"), Some(&who("sam", &[Role::User])), None)
            .await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    let paid = format!("/reward-claims/{id}/approve");
    problem(events.send(Method::POST, &paid, Some(&operator()), None).await, StatusCode::CONFLICT, "CONFLICT").await;

    // Approval: PENDING until an operator decides.
    let first = claim_as(&events, "ann", &reviewed_event, &reviewed).await;
    let second = claim_as(&events, "bob", &reviewed_event, &reviewed).await;
    assert_eq!((first["status"].as_str(), second["status"].as_str()), (Some("PENDING"), Some("PENDING")));
    let approve = format!("/reward-claims/{}/approve", first["id"].as_str().unwrap());
    for who in [player(), auditor()] {
        problem(events.send(Method::POST, &approve, Some(&who), None).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    let approved: Value =
        events.send(Method::POST, &approve, Some(&operator()), Some(json!({}))).await.json().await.unwrap();
    assert_eq!(approved["status"], "PAID", "approved and paid into the ledger in one transaction");

    let reject = format!("/reward-claims/{}/reject", second["id"].as_str().unwrap());
    problem(
        events.send(Method::POST, &reject, Some(&admin()), Some(json!({ "reason": "" }))).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    let rejected: Value = events
        .send(Method::POST, &reject, Some(&admin()), Some(json!({ "reason": "suspected bot" })))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((rejected["status"].as_str(), rejected["reason"].as_str()), (Some("REJECTED"), Some("suspected bot")));
    problem(
        events.send(Method::POST, &reject, Some(&admin()), Some(json!({ "reason": "again" }))).await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    let reward: Value =
        events.send(Method::GET, &format!("/rewards/{reviewed}"), Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(reward["remaining"], 1, "the rejected claim's stock came back");
    // Bob may claim again: the rejected claim gave its slot back.
    assert_eq!(claim_as(&events, "bob", &reviewed_event, &reviewed).await["status"], "PENDING");
    problem(
        events.send(Method::POST, "/reward-claims/nope/approve", Some(&operator()), None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;

    // Every move is in the claim's history with its actor.
    let path = format!("/reward-claims/{}/transitions", first["id"].as_str().unwrap());
    let history: Value = events.send(Method::GET, &path, Some(&auditor()), None).await.json().await.unwrap();
    let moves: Vec<(Value, Value, Value)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["fromStatus"].clone(), t["toStatus"].clone(), t["actorId"].clone()))
        .collect();
    assert_eq!(
        moves,
        [
            (Value::Null, json!("PENDING"), json!("id-ann")),
            (json!("PENDING"), json!("APPROVED"), json!(operator().sub)),
            (json!("APPROVED"), json!("PAID"), json!("ledger")),
        ]
    );
    stop.cancel();
}

/// A sink that counts distinct claim ids by their Idempotency-Key; fails a
/// third of its calls and answers a tenth too late.
struct Sink {
    server: TestServer,
    seen: Arc<Mutex<HashSet<String>>>,
    calls: Arc<AtomicUsize>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

async fn sink(flaky: bool) -> Sink {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (s, c, h) = (seen.clone(), calls.clone(), healthy.clone());
    let router = Router::new().route(
        "/grants",
        post(move |headers: HeaderMap| {
            let (seen, calls, healthy) = (s.clone(), c.clone(), h.clone());
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if !healthy.load(Ordering::SeqCst) {
                    return AxumStatus::SERVICE_UNAVAILABLE;
                }
                let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                if flaky && n % 3 == 0 {
                    return AxumStatus::INTERNAL_SERVER_ERROR;
                }
                // The grant happens, but the answer may come too late for the caller.
                seen.lock().unwrap().insert(key);
                if flaky && n % 10 == 1 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                AxumStatus::OK
            }
        }),
    );
    Sink { server: TestServer::spawn(router).await, seen, calls, healthy }
}

async fn a_flaky_webhook_still_gets_every_grant_once(store: TestStore) {
    let sink = sink(true).await;
    let settings = EventsSettings {
        payout_webhook_url: Some(sink.server.url("/grants")),
        payout_poll_ms: 20,
        payout_backoff_ms: 10,
        payout_timeout_ms: 200,
        payout_max_attempts: 50,
        ..EventsSettings::default()
    };
    let events = TestEvents::start_with(store, settings).await;
    let stop = dispatch(&events);
    let (event, reward) = event_with(
        &events,
        json!({ "name": "Coupon", "type": "COUPON", "details": { "couponCode": "C" }, "quantity": 1 }),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(claim_as(&events, &format!("u{i}"), &event, &reward).await["id"].as_str().unwrap().to_owned());
    }
    wait_for(&events, &ids, "PAID").await;
    let seen = sink.seen.lock().unwrap().clone();
    assert_eq!(seen, ids.iter().cloned().collect::<HashSet<_>>(), "every grant reached the sink, under its own key");
    assert!(sink.calls.load(Ordering::SeqCst) > 30, "failures were retried");
    stop.cancel();
}

async fn a_dead_webhook_leaves_failed_claims_that_a_retry_delivers(store: TestStore) {
    let sink = sink(false).await;
    sink.healthy.store(false, Ordering::SeqCst);
    let settings = EventsSettings {
        payout_webhook_url: Some(sink.server.url("/grants")),
        payout_poll_ms: 20,
        payout_backoff_ms: 10,
        payout_max_attempts: 3,
        ..EventsSettings::default()
    };
    let events = TestEvents::start_with(store, settings).await;
    let stop = dispatch(&events);
    let (event, reward) =
        event_with(&events, json!({ "name": "Gem", "type": "ITEM", "details": { "itemId": "gem" }, "quantity": 1 }))
            .await;
    let id = claim_as(&events, "unlucky", &event, &reward).await["id"].as_str().unwrap().to_owned();
    wait_for(&events, std::slice::from_ref(&id), "FAILED").await;
    let failed: Value =
        events.send(Method::GET, &format!("/reward-claims/{id}"), Some(&operator()), None).await.json().await.unwrap();
    assert!(failed["reason"].as_str().unwrap().contains("after 3 attempts"), "{failed}");

    sink.healthy.store(true, Ordering::SeqCst);
    let retry = format!("/reward-claims/{id}/retry");
    problem(events.send(Method::POST, &retry, Some(&player()), None).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let requeued: Value = events.send(Method::POST, &retry, Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(requeued["status"], "APPROVED");
    wait_for(&events, std::slice::from_ref(&id), "PAID").await;
    assert_eq!(sink.seen.lock().unwrap().len(), 1);
    problem(events.send(Method::POST, &retry, Some(&operator()), None).await, StatusCode::CONFLICT, "CONFLICT").await;
    stop.cancel();
}

async fn a_new_grant_is_paid_at_once_without_waiting_for_the_poll(store: TestStore) {
    // The outbox is looked at once a minute: only the handoff can pay in time.
    let sink = sink(false).await;
    let settings = EventsSettings {
        payout_poll_ms: 60_000,
        payout_webhook_url: Some(sink.server.url("/grants")),
        ..EventsSettings::default()
    };
    let events = TestEvents::start_with(store, settings).await;
    let stop = dispatch(&events);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (event, reward) =
        event_with(&events, json!({ "name": "Gems", "type": "CURRENCY", "details": {}, "quantity": 5 })).await;
    let claim = claim_as(&events, "pat", &event, &reward).await;
    assert_eq!(claim["status"], "APPROVED", "an external sink pays it after the grant");
    let id = claim["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    while status_of(&events, &id).await != "PAID" {
        assert!(started.elapsed() < Duration::from_secs(2), "the grant was not handed over to the dispatcher");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
}
