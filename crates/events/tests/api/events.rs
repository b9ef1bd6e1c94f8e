//! Events: every route with every role, validation, time zones, pagination.

use reqwest::{Method, StatusCode};
use rewards_kit::store_tests;
use rewards_kit::testing::{TestStore, assert_ops_contract, assert_unready};
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    serves_health_and_ready_and_reports_a_lost_store,
    operators_create_events_and_others_are_refused,
    bad_events_are_refused_with_the_fields_named,
    date_only_windows_are_whole_days_in_the_event_time_zone,
    staff_list_everything_and_players_only_what_they_can_claim,
    one_event_comes_with_its_rewards_and_drafts_are_hidden_from_players,
    partial_updates_by_put_and_patch_are_validated_as_a_whole,
    pagination_walks_hundreds_without_loss_or_repetition_while_events_are_added,
);

async fn serves_health_and_ready_and_reports_a_lost_store(store: TestStore) {
    let events = TestEvents::start(store).await;
    assert_ops_contract(&events.server, &events.store).await;
    let doc: Value = events.send(Method::GET, "/openapi.json", None, None).await.json().await.unwrap();
    for path in ["/events", "/events/{id}", "/rewards", "/rewards/{id}", "/audit"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    events.state.store().close().await;
    assert_unready(&events.server).await;
}

async fn operators_create_events_and_others_are_refused(store: TestStore) {
    let events = TestEvents::start(store).await;
    let body = json!({ "name": "Launch week", "condition": { "type": "none" }, "startDate": "2026-12-01", "endDate": "2026-12-07" });
    for who in [operator(), admin()] {
        let response = events.send(Method::POST, "/events", Some(&who), Some(body.clone())).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let event: Value = response.json().await.unwrap();
        assert_eq!(event["name"], "Launch week");
        assert_eq!(event["status"], "INACTIVE", "a new event is a draft until activated");
        assert_eq!(event["timeZone"], "Asia/Seoul");
        assert_eq!(event["description"], "");
        assert_eq!(event["condition"], json!({ "type": "none" }));
        assert!(event.get("rewards").is_none());
        assert!(event["id"].as_str().is_some() && event["createdAt"].as_str().is_some());
    }
    for who in [player(), auditor()] {
        let response = events.send(Method::POST, "/events", Some(&who), Some(body.clone())).await;
        problem(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(events.send(Method::POST, "/events", None, Some(body)).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        .await;
}

async fn bad_events_are_refused_with_the_fields_named(store: TestStore) {
    let events = TestEvents::start(store).await;
    let with = |change: Value| {
        let mut body = weekly("bad");
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let cases = [
        (with(json!({ "name": "" })), "name"),
        (with(json!({ "name": null })), "name"),
        (with(json!({ "status": "LIVE" })), "status"),
        (with(json!({ "startDate": "2026-02-30" })), "startDate"),
        (with(json!({ "endDate": "next week" })), "endDate"),
        (with(json!({ "startDate": "2026-11-29", "endDate": "2026-11-23" })), "endDate"),
        (with(json!({ "timeZone": "Mars/Olympus" })), "timeZone"),
        (with(json!({ "condition": { "type": "loginWeeks", "weeks": 2 } })), "condition.type"),
        (with(json!({ "condition": { "type": "loginDays" } })), "condition.days"),
        (with(json!({ "condition": { "type": "all", "conditions": [] } })), "condition.conditions"),
        (
            with(json!({ "condition": { "type": "any", "conditions": [{ "type": "questClear", "questId": 7 }] } })),
            "condition.conditions[0].questId",
        ),
        (with(json!({ "condition": { "type": "loginStreak", "days": 8 } })), "condition.days"),
        (
            with(
                json!({ "condition": { "type": "all", "conditions": [{ "type": "all", "conditions": [{ "type": "all", "conditions": [{ "type": "all", "conditions": [{ "type": "all", "conditions": [{ "type": "none" }] }] }] }] }] } }),
            ),
            "condition.conditions[0].conditions[0].conditions[0].conditions[0].conditions",
        ),
        (with(json!({ "rewards": [] })), "rewards"),
    ];
    for (body, field) in cases {
        let response = events.send(Method::POST, "/events", Some(&operator()), Some(body.clone())).await;
        let problem = problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(fields(&problem).contains(&field.to_owned()), "{body} → {problem}");
    }
    let malformed =
        events.call(Method::POST, "/events", Some(&operator())).header("content-type", "application/json").body("{");
    problem(malformed.send().await.unwrap(), StatusCode::BAD_REQUEST, "MALFORMED_BODY").await;
    let list: Value = events.send(Method::GET, "/events", Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(list["items"], json!([]), "nothing was created");
}

async fn date_only_windows_are_whole_days_in_the_event_time_zone(store: TestStore) {
    let events = TestEvents::start(store).await;
    let seoul = events
        .event(json!({ "name": "Seoul day", "condition": { "type": "none" }, "startDate": "2026-12-01", "endDate": "2026-12-01", "status": "ACTIVE" }))
        .await;
    assert_eq!(seoul["startDate"], "2026-11-30T15:00:00Z");
    assert_eq!(seoul["endDate"], "2026-12-01T14:59:59.999999Z");
    let utc = events
        .event(json!({ "name": "UTC day", "condition": { "type": "none" }, "startDate": "2026-12-01", "endDate": "2026-12-01",
            "status": "ACTIVE", "timeZone": "UTC" }))
        .await;
    assert_eq!(utc["startDate"], "2026-12-01T00:00:00Z");
    let instant = events
        .event(json!({ "name": "Instants", "condition": { "type": "none" }, "startDate": "2026-12-01T09:00:00+09:00",
            "endDate": "2026-12-01T10:00:00+09:00", "status": "ACTIVE" }))
        .await;
    assert_eq!(instant["startDate"], "2026-12-01T00:00:00Z");

    let active_at = async |t: &str| {
        let path = format!("/events?activeAt={}", t.replace('+', "%2B"));
        let list: Value = events.send(Method::GET, &path, Some(&operator()), None).await.json().await.unwrap();
        list["items"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(active_at("2026-11-30T14:59:59Z").await, Vec::<String>::new(), "a second before midnight in Seoul");
    assert_eq!(active_at("2026-11-30T15:00:00Z").await, ["Seoul day"], "midnight in Seoul");
    assert_eq!(active_at("2026-12-01T00:00:00Z").await, ["Instants", "UTC day", "Seoul day"]);
    assert_eq!(active_at("2026-12-01T14:59:59Z").await, ["UTC day", "Seoul day"]);
    assert_eq!(active_at("2026-12-01T15:00:00Z").await, ["UTC day"], "midnight again in Seoul");
    assert_eq!(active_at("2026-12-02T00:00:00+00:00").await, Vec::<String>::new());

    // A two-day event cannot ask for three login days; across midnight it has two days.
    let body = json!({ "name": "Short", "condition": { "type": "loginDays", "days": 3 },
        "startDate": "2026-12-01T23:00:00+09:00", "endDate": "2026-12-02T01:00:00+09:00" });
    let refused = events.send(Method::POST, "/events", Some(&operator()), Some(body)).await;
    problem(refused, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let body = json!({ "name": "Short", "condition": { "type": "loginDays", "days": 2 },
        "startDate": "2026-12-01T23:00:00+09:00", "endDate": "2026-12-02T01:00:00+09:00" });
    assert_eq!(events.send(Method::POST, "/events", Some(&operator()), Some(body)).await.status(), StatusCode::CREATED);
}

async fn staff_list_everything_and_players_only_what_they_can_claim(store: TestStore) {
    let events = TestEvents::start(store).await;
    // The clock says 2026-11-24T03:00Z (noon in Seoul).
    events.event(weekly("current")).await;
    events.event(json!({ "name": "draft", "condition": { "type": "none" }, "startDate": "2026-11-23", "endDate": "2026-11-29" })).await;
    events.event(json!({ "name": "past", "condition": { "type": "none" }, "startDate": "2026-11-01", "endDate": "2026-11-02", "status": "ACTIVE" })).await;
    events.event(json!({ "name": "ended", "condition": { "type": "none" }, "startDate": "2026-11-23", "endDate": "2026-11-29", "status": "ENDED" })).await;
    events.event(json!({ "name": "future", "condition": { "type": "none" }, "startDate": "2026-12-23", "endDate": "2026-12-29", "status": "ACTIVE" })).await;

    let names = async |path: &str, who| {
        let response = events.send(Method::GET, path, Some(&who), None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let list: Value = response.json().await.unwrap();
        list["items"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    for staff in [operator(), auditor(), admin()] {
        assert_eq!(names("/events", staff.clone()).await, ["future", "ended", "past", "draft", "current"]);
        assert_eq!(names("/events?status=ACTIVE", staff.clone()).await, ["future", "past", "current"]);
        assert_eq!(names("/events?status=ACTIVE&activeAt=2026-11-24T03:00:00Z", staff).await, ["current"]);
    }
    assert_eq!(names("/events", player()).await, ["current"]);
    assert_eq!(names("/events?status=ENDED", player()).await, Vec::<String>::new());
    events.clock.set(at("2026-12-25T00:00:00Z"));
    assert_eq!(names("/events", player()).await, ["future"]);

    for bad in [
        "/events?status=active",
        "/events?status=DONE",
        "/events?activeAt=tomorrow",
        "/events?limit=0",
        "/events?cursor=x",
        "/events?sort=asc",
    ] {
        problem(
            events.send(Method::GET, bad, Some(&operator()), None).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
    }
    problem(events.send(Method::GET, "/events", None, None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

async fn one_event_comes_with_its_rewards_and_drafts_are_hidden_from_players(store: TestStore) {
    let events = TestEvents::start(store).await;
    let live = events.event(weekly("live")).await;
    let id = live["id"].as_str().unwrap();
    let first = events
        .reward(json!({ "eventId": id, "name": "100 points", "type": "POINT", "details": {}, "quantity": 100 }))
        .await;
    let second = events
        .reward(json!({ "eventId": id, "name": "Sword", "type": "ITEM", "details": { "itemId": "sword-1" }, "quantity": 1, "stock": 10 }))
        .await;
    let path = format!("/events/{id}");
    for who in [player(), operator(), auditor(), admin()] {
        let event: Value = events.send(Method::GET, &path, Some(&who), None).await.json().await.unwrap();
        assert_eq!(event["rewards"], json!([first, second]), "{who:?}");
    }
    let draft = events.event(json!({ "name": "draft", "condition": { "type": "none" }, "startDate": "2026-11-23", "endDate": "2026-11-29" })).await;
    let draft_path = format!("/events/{}", draft["id"].as_str().unwrap());
    problem(events.send(Method::GET, &draft_path, Some(&player()), None).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
    assert_eq!(events.send(Method::GET, &draft_path, Some(&auditor()), None).await.status(), StatusCode::OK);
    problem(events.send(Method::GET, "/events/nope", Some(&admin()), None).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
    problem(events.send(Method::GET, &path, None, None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

async fn partial_updates_by_put_and_patch_are_validated_as_a_whole(store: TestStore) {
    let events = TestEvents::start(store).await;
    let event = events.event(weekly("editable")).await;
    let path = format!("/events/{}", event["id"].as_str().unwrap());

    let renamed = events.send(Method::PUT, &path, Some(&operator()), Some(json!({ "name": "Edited" }))).await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let renamed: Value = renamed.json().await.unwrap();
    assert_eq!(renamed["name"], "Edited");
    assert_eq!(renamed["condition"], event["condition"], "what is not given stays");
    assert_eq!(renamed["rewards"], json!([]));

    let patched = events
        .send(
            Method::PATCH,
            &path,
            Some(&admin()),
            Some(json!({ "status": "ENDED", "condition": { "type": "levelReached", "level": 10 } })),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!((patched["status"].as_str(), patched["condition"]["level"].as_i64()), (Some("ENDED"), Some(10)));

    // The merged event is validated: an end before the kept start is refused.
    let bad = events.send(Method::PUT, &path, Some(&operator()), Some(json!({ "endDate": "2026-11-01" }))).await;
    assert_eq!(fields(&problem(bad, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await), ["endDate"]);
    let shrink = events
        .send(
            Method::PUT,
            &path,
            Some(&operator()),
            Some(json!({ "condition": { "type": "loginStreak", "days": 3 }, "endDate": "2026-11-23" })),
        )
        .await;
    assert_eq!(fields(&problem(shrink, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await), ["condition.days"]);
    for body in [json!({}), json!({ "id": "other" }), json!({ "status": "PAUSED" }), json!({ "name": "" })] {
        let response = events.send(Method::PUT, &path, Some(&operator()), Some(body)).await;
        problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }
    for who in [player(), auditor()] {
        let response = events.send(Method::PATCH, &path, Some(&who), Some(json!({ "name": "x" }))).await;
        problem(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    let missing = events.send(Method::PUT, "/events/nope", Some(&operator()), Some(json!({ "name": "x" }))).await;
    problem(missing, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let kept: Value = events.send(Method::GET, &path, Some(&operator()), None).await.json().await.unwrap();
    assert_eq!(
        (kept["name"].as_str(), kept["status"].as_str()),
        (Some("Edited"), Some("ENDED")),
        "refused changes changed nothing"
    );
}

async fn pagination_walks_hundreds_without_loss_or_repetition_while_events_are_added(store: TestStore) {
    let events = TestEvents::start(store).await;
    let mut created = Vec::new();
    for i in 0..230 {
        let body = json!({ "name": format!("e{i:03}"), "condition": { "type": "none" }, "startDate": "2026-11-23", "endDate": "2026-11-29" });
        created.push(events.event(body).await["id"].as_str().unwrap().to_owned());
        if i % 3 == 0 {
            events.clock.advance(chrono::Duration::microseconds(1));
        }
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut added = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/events?limit=37&cursor={c}"),
            None => "/events?limit=37".to_owned(),
        };
        let page: Value = events.send(Method::GET, &path, Some(&auditor()), None).await.json().await.unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        // New events arrive while the list is being walked.
        events.clock.advance(chrono::Duration::milliseconds(1));
        events.event(weekly(&format!("late{added}"))).await;
        added += 1;
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen.len(), 230);
    assert_eq!(seen, created, "every event once, newest first; the late ones start a new first page");
}
