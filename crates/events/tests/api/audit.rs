//! The audit trail: who changed what, when, before and after.

use reqwest::{Method, StatusCode};
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::{Value, json};

use crate::support::*;

store_tests!(every_change_is_recorded_for_auditors);

async fn every_change_is_recorded_for_auditors(store: TestStore) {
    let events = TestEvents::start(store).await;
    let event = events.event(weekly("audited")).await;
    let event_id = event["id"].as_str().unwrap();
    events.clock.advance(chrono::Duration::seconds(1));
    let path = format!("/events/{event_id}");
    assert_eq!(
        events.send(Method::PUT, &path, Some(&admin()), Some(json!({ "status": "ENDED" }))).await.status(),
        StatusCode::OK
    );
    let reward = events.reward(json!({ "eventId": event_id, "name": "Gold", "type": "CURRENCY", "details": {}, "quantity": 5, "stock": 3 })).await;
    let reward_id = reward["id"].as_str().unwrap();
    events.clock.advance(chrono::Duration::seconds(1));
    let reward_path = format!("/rewards/{reward_id}");
    assert_eq!(
        events.send(Method::PATCH, &reward_path, Some(&operator()), Some(json!({ "quantity": 7 }))).await.status(),
        StatusCode::OK
    );
    // A refused change leaves no record.
    let refused = events.send(Method::PATCH, &reward_path, Some(&operator()), Some(json!({ "quantity": 0 }))).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    let trail: Value = events.send(Method::GET, "/audit", Some(&auditor()), None).await.json().await.unwrap();
    let items = trail["items"].as_array().unwrap();
    let actions: Vec<&str> = items.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["reward.update", "reward.create", "event.update", "event.create"]);

    let update = &items[2];
    assert_eq!(update["entity"], "event");
    assert_eq!(update["entityId"], event_id);
    assert_eq!(update["actor"], json!({ "id": "id-adam", "username": "adam" }));
    assert_eq!(update["before"]["status"], "ACTIVE");
    assert_eq!(update["after"]["status"], "ENDED");
    assert_eq!(update["at"], "2026-11-24T03:00:01Z");
    let created = &items[3];
    assert_eq!(created["before"], Value::Null);
    assert_eq!(created["after"]["name"], "audited");
    assert_eq!((items[0]["before"]["quantity"].as_i64(), items[0]["after"]["quantity"].as_i64()), (Some(5), Some(7)));

    let rewards_only: Value =
        events.send(Method::GET, "/audit?entity=reward", Some(&admin()), None).await.json().await.unwrap();
    assert_eq!(rewards_only["items"].as_array().unwrap().len(), 2);
    let by_admin: Value =
        events.send(Method::GET, "/audit?actor=id-adam", Some(&admin()), None).await.json().await.unwrap();
    assert_eq!(by_admin["items"].as_array().unwrap().len(), 1);
    let of_event: Value = events
        .send(Method::GET, &format!("/audit?entityId={event_id}"), Some(&admin()), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(of_event["items"].as_array().unwrap().len(), 2);
    problem(
        events.send(Method::GET, "/audit?entity=user", Some(&admin()), None).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    for who in [player(), operator()] {
        problem(events.send(Method::GET, "/audit", Some(&who), None).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(events.send(Method::GET, "/audit", None, None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}
