//! Registering, replacing and removing services at runtime.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

fn late_spec(instances: &[&str]) -> Value {
    json!({
        "name": "late",
        "prefix": "/late",
        "instances": instances,
        "routes": [{ "method": "GET", "path": "/ping", "public": true }]
    })
}

#[tokio::test]
async fn admins_register_replace_and_remove_services_without_a_restart() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let late_a = Echo::start("late-a").await;
    let late_b = Echo::start("late-b").await;
    let post = |body: Value, token: Option<&str>| gw.call(Method::POST, "/gateway/services", token).json(&body).send();

    problem(gw.call(Method::GET, "/late/ping", None).send().await.unwrap(), StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let created = post(late_spec(&[&late_a.server.base_url]), Some(&t.admin)).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let seen: Value = gw.call(Method::GET, "/late/ping", None).send().await.unwrap().json().await.unwrap();
    assert_eq!(seen["instance"], "late-a");

    let listed: Value =
        gw.call(Method::GET, "/gateway/services", Some(&t.admin)).send().await.unwrap().json().await.unwrap();
    let late = listed["items"].as_array().unwrap().iter().find(|s| s["name"] == "late").unwrap().clone();
    assert_eq!(late["prefix"], "/late");
    assert_eq!(late["instances"][0]["url"], late_a.server.base_url.as_str());
    assert_eq!(late["instances"][0]["healthy"], true);
    assert!(late["instances"][0].get("lastCheckedAt").is_some());
    assert_eq!(late["routes"], json!([{ "method": "GET", "path": "/ping", "public": true }]));
    let names: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["auth-service", "echo", "late"]);

    // Replacing adds an instance; traffic spreads over both.
    let replaced = post(late_spec(&[&late_a.server.base_url, &late_b.server.base_url]), Some(&t.admin)).await.unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    for _ in 0..6 {
        gw.call(Method::GET, "/late/ping", None).send().await.unwrap();
    }
    assert!(late_a.hits() >= 3 && late_b.hits() >= 3, "round robin: {} / {}", late_a.hits(), late_b.hits());

    let removed = gw.call(Method::DELETE, "/gateway/services/late", Some(&t.admin)).send().await.unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    problem(gw.call(Method::GET, "/late/ping", None).send().await.unwrap(), StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let again = gw.call(Method::DELETE, "/gateway/services/late", Some(&t.admin)).send().await.unwrap();
    problem(again, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}

#[tokio::test]
async fn only_admins_change_the_registry_and_bad_specs_are_refused() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let spec = late_spec(&["http://127.0.0.1:9"]);
    for token in [&t.user, &t.operator, &t.auditor] {
        let response = gw.call(Method::POST, "/gateway/services", Some(token)).json(&spec).send().await.unwrap();
        problem(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        let listing = gw.call(Method::GET, "/gateway/services", Some(token)).send().await.unwrap();
        problem(listing, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        let delete = gw.call(Method::DELETE, "/gateway/services/echo", Some(token)).send().await.unwrap();
        problem(delete, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    let anonymous = gw.call(Method::POST, "/gateway/services", None).json(&spec).send().await.unwrap();
    problem(anonymous, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;

    let bad = [
        json!({ "name": "x", "prefix": "/gateway", "instances": ["http://127.0.0.1:9"], "routes": [{ "method": "GET", "path": "/a", "public": true }] }),
        json!({ "name": "x", "prefix": "/x", "instances": [], "routes": [{ "method": "GET", "path": "/a", "public": true }] }),
        json!({ "name": "x", "prefix": "/x", "instances": ["ftp://h"], "routes": [{ "method": "GET", "path": "/a", "public": true }] }),
        json!({ "name": "x", "prefix": "/x", "instances": ["http://127.0.0.1:9"], "routes": [{ "method": "GET", "path": "/a" }] }),
        json!({ "name": "x", "prefix": "/x", "instances": ["http://127.0.0.1:9"], "routes": [{ "method": "GET", "path": "/a", "roles": ["BOSS"] }] }),
        json!({ "name": "x", "prefix": "/x", "instances": ["http://127.0.0.1:9"], "routes": [], "extra": 1 }),
        json!({ "name": "X Y", "prefix": "/x", "instances": ["http://127.0.0.1:9"], "routes": [{ "method": "GET", "path": "/a", "public": true }] }),
    ];
    for body in bad {
        let response = gw.call(Method::POST, "/gateway/services", Some(&t.admin)).json(&body).send().await.unwrap();
        problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }
    let clash = json!({ "name": "other", "prefix": "/echo", "instances": ["http://127.0.0.1:9"], "routes": [{ "method": "GET", "path": "/a", "public": true }] });
    let response = gw.call(Method::POST, "/gateway/services", Some(&t.admin)).json(&clash).send().await.unwrap();
    problem(response, StatusCode::CONFLICT, "CONFLICT").await;
    // Nothing changed.
    let listed: Value =
        gw.call(Method::GET, "/gateway/services", Some(&t.admin)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}
