//! Rewards: every route with every role, validation, stock changes.

use reqwest::{Method, StatusCode};
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    operators_create_rewards_of_existing_events,
    bad_rewards_are_refused_with_the_fields_named,
    rewards_are_listed_and_read_by_staff_only,
    stock_changes_keep_what_was_granted,
);

async fn operators_create_rewards_of_existing_events(store: TestStore) {
    let events = TestEvents::start(store).await;
    let event = events.event(weekly("with rewards")).await;
    let id = event["id"].as_str().unwrap();
    let body = json!({ "eventId": id, "name": "Coupon", "type": "COUPON", "details": { "couponCode": "WELCOME" }, "quantity": 1, "stock": 100 });
    for who in [operator(), admin()] {
        let response = events.send(Method::POST, "/rewards", Some(&who), Some(body.clone())).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let reward: Value = response.json().await.unwrap();
        assert_eq!(reward["eventId"], id);
        assert_eq!(reward["type"], "COUPON");
        assert_eq!(reward["details"], json!({ "couponCode": "WELCOME" }));
        assert_eq!((reward["stock"].as_i64(), reward["remaining"].as_i64()), (Some(100), Some(100)));
        assert_eq!((reward["perUserLimit"].as_i64(), reward["requiresApproval"].as_bool()), (Some(1), Some(false)));
    }
    let unlimited = events
        .reward(json!({ "eventId": id, "name": "Points", "type": "POINT", "details": {}, "quantity": 50, "perUserLimit": 3, "requiresApproval": true }))
        .await;
    assert_eq!((unlimited["stock"].clone(), unlimited["remaining"].clone()), (Value::Null, Value::Null));
    assert_eq!((unlimited["perUserLimit"].as_i64(), unlimited["requiresApproval"].as_bool()), (Some(3), Some(true)));

    for who in [player(), auditor()] {
        let response = events.send(Method::POST, "/rewards", Some(&who), Some(body.clone())).await;
        problem(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(
        events.send(Method::POST, "/rewards", None, Some(body.clone())).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
    let orphan = json!({ "eventId": "no-such-event", "name": "x", "type": "POINT", "details": {}, "quantity": 1 });
    problem(
        events.send(Method::POST, "/rewards", Some(&operator()), Some(orphan)).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
}

async fn bad_rewards_are_refused_with_the_fields_named(store: TestStore) {
    let events = TestEvents::start(store).await;
    let event = events.event(weekly("e")).await;
    let id = event["id"].as_str().unwrap();
    let base = json!({ "eventId": id, "name": "r", "type": "POINT", "details": {}, "quantity": 1 });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("type", json!("GEM")), "type"),
        (with("quantity", json!(0)), "quantity"),
        (with("quantity", json!("1")), "quantity"),
        (with("stock", json!(-1)), "stock"),
        (with("perUserLimit", json!(0)), "perUserLimit"),
        (with("details", json!("sword")), "details"),
        (with("name", json!("")), "name"),
        (json!({ "eventId": id, "name": "r", "type": "ITEM", "details": {}, "quantity": 1 }), "details.itemId"),
        (
            json!({ "eventId": id, "name": "r", "type": "COUPON", "details": { "couponCode": " " }, "quantity": 1 }),
            "details.couponCode",
        ),
        (with("remaining", json!(5)), "remaining"),
    ];
    for (body, field) in cases {
        let response = events.send(Method::POST, "/rewards", Some(&operator()), Some(body.clone())).await;
        let problem = problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(fields(&problem).contains(&field.to_owned()), "{body} → {problem}");
    }
}

async fn rewards_are_listed_and_read_by_staff_only(store: TestStore) {
    let events = TestEvents::start(store).await;
    let a = events.event(weekly("a")).await;
    let b = events.event(weekly("b")).await;
    let mut of_a = Vec::new();
    for i in 0..5 {
        let event = if i % 2 == 0 { &a } else { &b };
        let reward = events
            .reward(json!({ "eventId": event["id"], "name": format!("r{i}"), "type": "POINT", "details": {}, "quantity": 1 }))
            .await;
        if i % 2 == 0 {
            of_a.push(reward["id"].as_str().unwrap().to_owned());
        }
    }
    for who in [operator(), auditor(), admin()] {
        let all: Value = events.send(Method::GET, "/rewards?limit=3", Some(&who), None).await.json().await.unwrap();
        assert_eq!(all["items"].as_array().unwrap().len(), 3);
        assert!(all["nextCursor"].is_string());
        let path = format!("/rewards?eventId={}", a["id"].as_str().unwrap());
        let filtered: Value = events.send(Method::GET, &path, Some(&who), None).await.json().await.unwrap();
        let ids: Vec<&str> = filtered["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, of_a.iter().rev().map(String::as_str).collect::<Vec<_>>());
        let one = events.send(Method::GET, &format!("/rewards/{}", of_a[0]), Some(&who), None).await;
        assert_eq!(one.status(), StatusCode::OK);
    }
    problem(events.send(Method::GET, "/rewards", Some(&player()), None).await, StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    let path = format!("/rewards/{}", of_a[0]);
    problem(events.send(Method::GET, &path, Some(&player()), None).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    problem(
        events.send(Method::GET, "/rewards/nope", Some(&auditor()), None).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    problem(
        events.send(Method::GET, "/rewards?limit=500", Some(&auditor()), None).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
}

async fn stock_changes_keep_what_was_granted(store: TestStore) {
    let events = TestEvents::start(store).await;
    let event = events.event(weekly("stocked")).await;
    let reward = events
        .reward(json!({ "eventId": event["id"], "name": "Sword", "type": "ITEM", "details": { "itemId": "s" }, "quantity": 1, "stock": 100 }))
        .await;
    let id = reward["id"].as_str().unwrap().to_owned();
    let path = format!("/rewards/{id}");
    // Sixty grants were made (claims do this with a guarded decrement).
    rewards_kit::with_pool!(events.state.store(), |pool| {
        sqlx::query("UPDATE rewards SET remaining = remaining - 60 WHERE id = $1")
            .bind(&id)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected()
    });

    let lowered = events.send(Method::PUT, &path, Some(&operator()), Some(json!({ "stock": 80 }))).await;
    assert_eq!(lowered.status(), StatusCode::OK);
    let lowered: Value = lowered.json().await.unwrap();
    assert_eq!((lowered["stock"].as_i64(), lowered["remaining"].as_i64()), (Some(80), Some(20)));

    let too_low = events.send(Method::PATCH, &path, Some(&admin()), Some(json!({ "stock": 59 }))).await;
    problem(too_low, StatusCode::CONFLICT, "CONFLICT").await;

    let renamed: Value = events
        .send(Method::PATCH, &path, Some(&operator()), Some(json!({ "name": "Great sword", "perUserLimit": 2 })))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (renamed["name"].as_str(), renamed["perUserLimit"].as_i64(), renamed["remaining"].as_i64()),
        (Some("Great sword"), Some(2), Some(20))
    );

    let unlimited: Value =
        events.send(Method::PUT, &path, Some(&operator()), Some(json!({ "stock": null }))).await.json().await.unwrap();
    assert_eq!((unlimited["stock"].clone(), unlimited["remaining"].clone()), (Value::Null, Value::Null));
    let limited_again = events.send(Method::PUT, &path, Some(&operator()), Some(json!({ "stock": 10 }))).await;
    problem(limited_again, StatusCode::CONFLICT, "CONFLICT").await;

    for body in
        [json!({}), json!({ "eventId": "other" }), json!({ "type": "ITEM", "details": {} }), json!({ "quantity": 0 })]
    {
        let response = events.send(Method::PUT, &path, Some(&operator()), Some(body.clone())).await;
        problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }
    for who in [player(), auditor()] {
        problem(
            events.send(Method::PUT, &path, Some(&who), Some(json!({ "name": "x" }))).await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
    }
    let missing = events.send(Method::PUT, "/rewards/nope", Some(&operator()), Some(json!({ "name": "x" }))).await;
    problem(missing, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}
