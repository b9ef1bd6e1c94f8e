//! Claims: the contract's order of answers, and exact outcomes under races.

use reqwest::{Method, StatusCode};
use rewards_kit::clock::Clock;
use rewards_kit::identity::Role;
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    answers_come_in_the_contracts_order,
    refused_conditions_are_recorded_once_and_say_what_is_missing,
    one_player_racing_itself_gets_exactly_its_limit,
    a_thousand_players_racing_for_a_hundred_get_exactly_a_hundred,
    one_idempotency_key_makes_one_claim,
    claim_history_for_players_and_staff,
    a_change_through_another_instance_holds_for_the_next_claim,
    two_instances_racing_for_one_player_grant_exactly_its_limit,
    a_slot_given_back_below_the_highest_is_taken_again,
    a_player_turned_away_for_stock_is_told_so_every_time,
    a_lowered_limit_holds_against_slots_freed_below_the_highest,
);

async fn setup(events: &TestEvents, condition: Value, reward: Value) -> (String, String) {
    let mut body = weekly("claimable");
    body["condition"] = condition;
    let event = events.event(body).await;
    let id = event["id"].as_str().unwrap().to_owned();
    let mut reward = reward;
    reward["eventId"] = json!(id);
    let reward = events.reward(reward).await;
    (id, reward["id"].as_str().unwrap().to_owned())
}

fn points(extra: Value) -> Value {
    let mut r = json!({ "name": "Points", "type": "POINT", "details": {}, "quantity": 10 });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

async fn claim(
    events: &TestEvents,
    who: &rewards_kit::identity::Identity,
    event: &str,
    reward: &str,
) -> reqwest::Response {
    events.send(Method::POST, "/reward-claims", Some(who), Some(json!({ "eventId": event, "rewardId": reward }))).await
}

async fn answers_come_in_the_contracts_order(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) = setup(&events, json!({ "type": "none" }), points(json!({ "stock": 2 }))).await;
    let (other_event, other_reward) = setup(&events, json!({ "type": "none" }), points(json!({}))).await;
    let pat = player();

    problem(claim(&events, &pat, "nope", &reward).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    problem(claim(&events, &pat, &event, &other_reward).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    // Not active: a draft, and outside the window.
    let path = format!("/events/{other_event}");
    events.send(Method::PATCH, &path, Some(&operator()), Some(json!({ "status": "INACTIVE" }))).await;
    problem(claim(&events, &pat, &other_event, &other_reward).await, StatusCode::BAD_REQUEST, "EVENT_NOT_ACTIVE").await;
    events.clock.set(at("2026-12-01T00:00:00Z"));
    problem(claim(&events, &pat, &event, &reward).await, StatusCode::BAD_REQUEST, "EVENT_NOT_ACTIVE").await;
    events.clock.set(at("2026-11-24T03:00:00Z"));

    let first = claim(&events, &pat, &event, &reward).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let granted: Value = first.json().await.unwrap();
    assert_eq!(granted["status"], "PAID", "the built-in ledger pays in the grant's own transaction");
    assert_eq!(granted["processedAt"], granted["createdAt"]);
    assert_eq!(granted["userId"], pat.sub);
    assert_eq!(granted["reward"], json!({ "name": "Points", "type": "POINT", "details": {}, "quantity": 10 }));

    problem(claim(&events, &pat, &event, &reward).await, StatusCode::CONFLICT, "DUPLICATE_CLAIM").await;
    let sam = who("sam", &[Role::User]);
    assert_eq!(claim(&events, &sam, &event, &reward).await.status(), StatusCode::CREATED);
    let kim = who("kim", &[Role::User]);
    problem(claim(&events, &kim, &event, &reward).await, StatusCode::CONFLICT, "OUT_OF_STOCK").await;
    // Known sold out, the reward refuses every claim from memory, before the
    // per-user limit: nothing can be granted either way.
    problem(claim(&events, &pat, &event, &reward).await, StatusCode::CONFLICT, "OUT_OF_STOCK").await;

    let approval = points(json!({ "requiresApproval": true }));
    let (e3, r3) = setup(&events, json!({ "type": "none" }), approval).await;
    let pending: Value = claim(&events, &sam, &e3, &r3).await.json().await.unwrap();
    assert_eq!(pending["status"], "PENDING");

    for staff in [operator(), auditor()] {
        problem(claim(&events, &staff, &e3, &r3).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    let bad = events.send(Method::POST, "/reward-claims", Some(&pat), Some(json!({ "eventId": event }))).await;
    problem(bad, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
}

async fn refused_conditions_are_recorded_once_and_say_what_is_missing(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) =
        setup(&events, json!({ "type": "loginDays", "days": 2 }), points(json!({ "stock": 5 }))).await;
    let pat = player();
    for _ in 0..3 {
        let refused =
            problem(claim(&events, &pat, &event, &reward).await, StatusCode::BAD_REQUEST, "CONDITION_NOT_MET").await;
        assert!(refused["detail"].as_str().unwrap().contains("0 of 2 login days"), "{refused}");
    }
    let mine: Value = events.send(Method::GET, "/reward-claims/me", Some(&pat), None).await.json().await.unwrap();
    let items = mine["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "retries refresh one record: {mine}");
    assert_eq!(items[0]["status"], "REJECTED");
    assert!(items[0]["reason"].as_str().unwrap().contains("0 of 2 login days"));

    // Two login days later, the claim goes through (the refusal stays in the history).
    let logins = json!({ "activities": [
        { "id": "l1", "userId": pat.sub, "type": "LOGIN", "occurredAt": "2026-11-23T01:00:00Z" },
        { "id": "l2", "userId": pat.sub, "type": "LOGIN", "occurredAt": "2026-11-24T01:00:00Z" },
    ]});
    assert_eq!(
        events.send(Method::POST, "/activities", Some(&operator()), Some(logins)).await.status(),
        StatusCode::OK
    );
    assert_eq!(claim(&events, &pat, &event, &reward).await.status(), StatusCode::CREATED);
    let reward_now: Value =
        events.send(Method::GET, &format!("/rewards/{reward}"), Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(reward_now["remaining"], 4, "a refusal takes no stock");
}

async fn one_player_racing_itself_gets_exactly_its_limit(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) =
        setup(&events, json!({ "type": "none" }), points(json!({ "perUserLimit": 2, "stock": 50 }))).await;
    let pat = player();
    let body = json!({ "eventId": event, "rewardId": reward });
    let results = all_at_once(100, |_| events.call(Method::POST, "/reward-claims", Some(&pat)).json(&body)).await;
    assert_eq!(count(&results, StatusCode::CREATED, None), 2, "{results:?}");
    assert_eq!(count(&results, StatusCode::CONFLICT, Some("DUPLICATE_CLAIM")), 98);
    let reward_now: Value =
        events.send(Method::GET, &format!("/rewards/{reward}"), Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(reward_now["remaining"], 48);
}

async fn a_thousand_players_racing_for_a_hundred_get_exactly_a_hundred(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) = setup(&events, json!({ "type": "none" }), points(json!({ "stock": 100 }))).await;
    let body = json!({ "eventId": event, "rewardId": reward });
    let players: Vec<_> = (0..1000).map(|i| who(&format!("p{i}"), &[Role::User])).collect();
    let results =
        all_at_once(1000, |i| events.call(Method::POST, "/reward-claims", Some(&players[i])).json(&body)).await;
    assert_eq!(count(&results, StatusCode::CREATED, None), 100);
    assert_eq!(count(&results, StatusCode::CONFLICT, Some("OUT_OF_STOCK")), 900, "no 5xx, nothing else");
    let reward_now: Value =
        events.send(Method::GET, &format!("/rewards/{reward}"), Some(&operator()), None).await.json().await.unwrap();
    assert_eq!((reward_now["stock"].as_i64(), reward_now["remaining"].as_i64()), (Some(100), Some(0)));
    let granted: i64 = rewards_kit::with_pool!(events.state.store(), |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM reward_claims WHERE reward_id = $1 AND slot IS NOT NULL")
            .bind(&reward)
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(granted, 100, "grants equal the stock consumed");
}

async fn one_idempotency_key_makes_one_claim(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) = setup(&events, json!({ "type": "none" }), points(json!({ "perUserLimit": 5 }))).await;
    let pat = player();
    let body = json!({ "eventId": event, "rewardId": reward });
    let results = all_at_once(50, |_| {
        events.call(Method::POST, "/reward-claims", Some(&pat)).header("Idempotency-Key", "buy-once-1").json(&body)
    })
    .await;
    let created: Vec<&Value> = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).map(|(_, b)| b).collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|b| b["id"] == created[0]["id"]), "every 201 is the same claim");
    assert_eq!(
        created.len() + count(&results, StatusCode::CONFLICT, Some("IDEMPOTENCY_IN_PROGRESS")),
        50,
        "{results:?}"
    );

    let again =
        events.call(Method::POST, "/reward-claims", Some(&pat)).header("Idempotency-Key", "buy-once-1").json(&body);
    let again = again.send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], created[0]["id"], "a repeat returns the first answer");

    let other_body = json!({ "eventId": event, "rewardId": "another" });
    let reused = events
        .call(Method::POST, "/reward-claims", Some(&pat))
        .header("Idempotency-Key", "buy-once-1")
        .json(&other_body);
    problem(reused.send().await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED").await;

    // Keys are the caller's: another player's same key is another request.
    let sam = who("sam", &[Role::User]);
    let theirs =
        events.call(Method::POST, "/reward-claims", Some(&sam)).header("Idempotency-Key", "buy-once-1").json(&body);
    assert_eq!(theirs.send().await.unwrap().status(), StatusCode::CREATED);

    let mine: Value = events.send(Method::GET, "/reward-claims/me", Some(&pat), None).await.json().await.unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 1, "one claim for fifty requests and a repeat");

    // A key left "in progress" by a request that died before its grant
    // committed: a retry goes on at once, with the claim id the key names.
    let hash = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(
            serde_json::to_string(&json!({ "eventId": event, "rewardId": reward })).unwrap().as_bytes(),
        );
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let now = events.clock.now().timestamp_micros();
    let orphan_claim = "0193c0de-0000-7000-8000-000000000001";
    rewards_kit::with_pool!(events.state.store(), |pool| {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, claim_id, created_at, expires_at) \
                     VALUES ($1, 'orphan', $2, $3, $4, $5)",
        )
        .bind(&pat.sub)
        .bind(&hash)
        .bind(orphan_claim)
        .bind(now)
        .bind(now + 86_400_000_000)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected()
    });
    let orphan =
        || events.call(Method::POST, "/reward-claims", Some(&pat)).header("Idempotency-Key", "orphan").json(&body);
    let resumed = orphan().send().await.unwrap();
    assert_eq!(resumed.status(), StatusCode::CREATED);
    assert_eq!(resumed.json::<Value>().await.unwrap()["id"], orphan_claim, "the claim id the key chose");
    let again: Value = orphan().send().await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], orphan_claim);
}

async fn claim_history_for_players_and_staff(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) = setup(&events, json!({ "type": "none" }), points(json!({ "perUserLimit": 3 }))).await;
    let pat = player();
    let sam = who("sam", &[Role::User]);
    let mut pats = Vec::new();
    for _ in 0..3 {
        pats.push(claim(&events, &pat, &event, &reward).await.json::<Value>().await.unwrap());
        events.clock.advance(chrono::Duration::seconds(1));
    }
    let sams: Value = claim(&events, &sam, &event, &reward).await.json().await.unwrap();

    let mine: Value =
        events.send(Method::GET, "/reward-claims/me?limit=2", Some(&pat), None).await.json().await.unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);
    assert_eq!(mine["items"][0]["id"], pats[2]["id"], "newest first");
    assert!(mine["nextCursor"].is_string());

    let path = format!("/reward-claims/{}", pats[0]["id"].as_str().unwrap());
    assert_eq!(events.send(Method::GET, &path, Some(&pat), None).await.status(), StatusCode::OK);
    problem(events.send(Method::GET, &path, Some(&sam), None).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_eq!(events.send(Method::GET, &path, Some(&auditor()), None).await.status(), StatusCode::OK);

    let by_user: Value = events
        .send(Method::GET, &format!("/reward-claims?userId={}&status=PAID", sam.sub), Some(&operator()), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_user["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_user["items"][0]["id"], sams["id"]);
    let window: Value = events
        .send(Method::GET, "/reward-claims?from=2026-11-24T03:00:01Z&to=2026-11-24T03:00:02Z", Some(&auditor()), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(window["items"].as_array().unwrap().len(), 1, "{window}");
    problem(events.send(Method::GET, "/reward-claims", Some(&pat), None).await, StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    for bad in ["/reward-claims?status=GRANTED", "/reward-claims?from=yesterday", "/reward-claims?limit=0"] {
        problem(
            events.send(Method::GET, bad, Some(&admin()), None).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
    }
}

async fn a_change_through_another_instance_holds_for_the_next_claim(store: TestStore) {
    let a = TestEvents::start(store).await;
    let b = a.another_instance().await;
    let (event, reward) = setup(&a, json!({ "type": "none" }), points(json!({}))).await;
    // A claim through A: A now remembers the reward and its event.
    assert_eq!(claim(&a, &player(), &event, &reward).await.status(), StatusCode::CREATED);

    // Through B, the reward comes to need approval: A's next grant is PENDING.
    let path = format!("/rewards/{reward}");
    let changed = b.send(Method::PATCH, &path, Some(&operator()), Some(json!({ "requiresApproval": true }))).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let sam = who("sam", &[Role::User]);
    let pending: Value = claim(&a, &sam, &event, &reward).await.json().await.unwrap();
    assert_eq!(pending["status"], "PENDING", "{pending}");

    // Through B, the event is closed: A refuses at once.
    let path = format!("/events/{event}");
    let closed = b.send(Method::PATCH, &path, Some(&operator()), Some(json!({ "status": "INACTIVE" }))).await;
    assert_eq!(closed.status(), StatusCode::OK);
    let kim = who("kim", &[Role::User]);
    problem(claim(&a, &kim, &event, &reward).await, StatusCode::BAD_REQUEST, "EVENT_NOT_ACTIVE").await;
}

async fn two_instances_racing_for_one_player_grant_exactly_its_limit(store: TestStore) {
    let a = TestEvents::start(store).await;
    let b = a.another_instance().await;
    let (event, reward) =
        setup(&a, json!({ "type": "none" }), points(json!({ "perUserLimit": 3, "stock": 100 }))).await;
    let pat = player();
    let body = json!({ "eventId": event, "rewardId": reward });
    let results = all_at_once(80, |i| {
        let instance = if i % 2 == 0 { &a } else { &b };
        instance.call(Method::POST, "/reward-claims", Some(&pat)).json(&body)
    })
    .await;
    assert_eq!(count(&results, StatusCode::CREATED, None), 3, "{results:?}");
    assert_eq!(count(&results, StatusCode::CONFLICT, Some("DUPLICATE_CLAIM")), 77);
    let reward_now: Value =
        a.send(Method::GET, &format!("/rewards/{reward}"), Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(reward_now["remaining"], 97, "one unit per grant");
}

async fn a_slot_given_back_below_the_highest_is_taken_again(store: TestStore) {
    let events = TestEvents::start(store).await;
    let reviewed = points(json!({ "perUserLimit": 3, "requiresApproval": true }));
    let (event, reward) = setup(&events, json!({ "type": "none" }), reviewed).await;
    let pat = player();
    let mut claims = Vec::new();
    for _ in 0..3 {
        claims.push(claim(&events, &pat, &event, &reward).await.json::<Value>().await.unwrap());
    }
    problem(claim(&events, &pat, &event, &reward).await, StatusCode::CONFLICT, "DUPLICATE_CLAIM").await;

    // Rejecting the second claim frees slot 2, below the highest (3).
    let reject = format!("/reward-claims/{}/reject", claims[1]["id"].as_str().unwrap());
    let reason = json!({ "reason": "duplicate account" });
    let rejected = events.send(Method::POST, &reject, Some(&operator()), Some(reason)).await;
    assert_eq!(rejected.status(), StatusCode::OK);
    assert_eq!(claim(&events, &pat, &event, &reward).await.status(), StatusCode::CREATED);
    problem(claim(&events, &pat, &event, &reward).await, StatusCode::CONFLICT, "DUPLICATE_CLAIM").await;

    let slots: Vec<i64> = rewards_kit::with_pool!(events.state.store(), |pool| {
        sqlx::query_scalar(
            "SELECT slot FROM reward_claims WHERE user_id = $1 AND reward_id = $2 AND slot IS NOT NULL ORDER BY slot",
        )
        .bind(&pat.sub)
        .bind(&reward)
        .fetch_all(pool)
        .await
        .unwrap()
    });
    assert_eq!(slots, [1, 2, 3], "the freed slot was taken again, and no slot past the limit");
}

async fn a_player_turned_away_for_stock_is_told_so_every_time(store: TestStore) {
    let events = TestEvents::start(store).await;
    let (event, reward) = setup(&events, json!({ "type": "none" }), points(json!({ "stock": 1 }))).await;
    assert_eq!(claim(&events, &who("sam", &[Role::User]), &event, &reward).await.status(), StatusCode::CREATED);
    // Ten at once from one player, most likely in one batch: none holds a
    // claim, so none is a duplicate.
    let pat = player();
    let body = json!({ "eventId": event, "rewardId": reward });
    let results = all_at_once(10, |_| events.call(Method::POST, "/reward-claims", Some(&pat)).json(&body)).await;
    assert_eq!(count(&results, StatusCode::CONFLICT, Some("OUT_OF_STOCK")), 10, "{results:?}");
}

async fn a_lowered_limit_holds_against_slots_freed_below_the_highest(store: TestStore) {
    let events = TestEvents::start(store).await;
    let reviewed = points(json!({ "perUserLimit": 2, "requiresApproval": true }));
    let (event, reward) = setup(&events, json!({ "type": "none" }), reviewed).await;
    let pat = player();
    let first: Value = claim(&events, &pat, &event, &reward).await.json().await.unwrap();
    assert_eq!(claim(&events, &pat, &event, &reward).await.status(), StatusCode::CREATED);
    // Slot 1 is given back; pat holds slot 2 alone; then the limit drops to 1.
    let reject = format!("/reward-claims/{}/reject", first["id"].as_str().unwrap());
    let reason = json!({ "reason": "second account" });
    assert_eq!(events.send(Method::POST, &reject, Some(&operator()), Some(reason)).await.status(), StatusCode::OK);
    let path = format!("/rewards/{reward}");
    let lowered = events.send(Method::PATCH, &path, Some(&operator()), Some(json!({ "perUserLimit": 1 }))).await;
    assert_eq!(lowered.status(), StatusCode::OK);
    problem(claim(&events, &pat, &event, &reward).await, StatusCode::CONFLICT, "DUPLICATE_CLAIM").await;
}
