//! Health checks: a killed instance leaves the rotation, a revived one returns.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn healthy(gw: &TestGateway, token: &str, url: &str) -> bool {
    let listed: Value =
        gw.call(Method::GET, "/gateway/services", Some(token)).send().await.unwrap().json().await.unwrap();
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().clone())
        .find(|i| i["url"] == url)
        .is_some_and(|i| i["healthy"] == true)
}

#[tokio::test]
async fn traffic_moves_away_from_a_killed_instance_and_back_when_it_recovers() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let b = Echo::start("echo-b").await;
    let b_addr = b.server.addr;
    let b_url = b.server.base_url.clone();
    let spec = echo_spec(vec![gw.echo.server.base_url.clone(), b_url.clone()]);
    let response = gw.call(Method::POST, "/gateway/services", Some(&t.admin)).json(&spec).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let mut instances = Vec::new();
    for _ in 0..10 {
        let seen: Value = gw.call(Method::GET, "/echo/public", None).send().await.unwrap().json().await.unwrap();
        instances.push(seen["instance"].as_str().unwrap().to_owned());
    }
    assert!(instances.contains(&"echo-a".to_owned()) && instances.contains(&"echo-b".to_owned()), "{instances:?}");

    // Kill B: every request still succeeds (a refused connection is retried
    // on A), and the health checker takes B out of rotation.
    b.server.stop().await;
    for _ in 0..10 {
        let response = gw.call(Method::GET, "/echo/public", None).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await.unwrap()["instance"], "echo-a");
    }
    wait_until("B is marked unhealthy", async || !healthy(&gw, &t.admin, &b_url).await).await;
    let ready: Value = gw.call(Method::GET, "/ready", None).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["echo"]["status"], "up", "one instance left is enough: {ready}");

    // Revive B on the same address: it returns to the rotation.
    let listener = tokio::net::TcpListener::bind(b_addr).await.unwrap();
    let revived = Echo::start_on("echo-b", listener).await;
    wait_until("B is healthy again", async || healthy(&gw, &t.admin, &b_url).await).await;
    for _ in 0..10 {
        gw.call(Method::GET, "/echo/public", None).send().await.unwrap();
    }
    assert!(revived.hits() >= 3, "traffic came back to B: {}", revived.hits());
}

#[tokio::test]
async fn a_service_without_healthy_instances_is_503() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let dead = json!({ "name": "dead", "prefix": "/dead", "instances": ["http://127.0.0.1:9"],
        "routes": [{ "method": "POST", "path": "/x", "public": true }] });
    let response = gw.call(Method::POST, "/gateway/services", Some(&t.admin)).json(&dead).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let first = gw.call(Method::POST, "/dead/x", None).json(&json!({})).send().await.unwrap();
    assert_eq!(first.headers()["retry-after"], "1");
    problem(first, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    let ready = gw.call(Method::GET, "/ready", None).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["dead"]["status"], "down");
    assert_eq!(body["checks"]["auth-service"]["status"], "up");
}
