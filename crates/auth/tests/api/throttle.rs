//! Brute force: failed logins throttled per username and per address;
//! a storm of logins shed instead of queued.

use std::net::IpAddr;

use chrono::Duration;
use reqwest::{Method, StatusCode};
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::json;

use crate::support::*;

store_tests!(
    repeated_failures_for_a_username_are_429_until_the_window_ends,
    an_address_guessing_many_usernames_is_throttled,
    a_login_storm_is_shed_with_503_not_queued,
);

async fn login_from(auth: &TestAuth, username: &str, password: &str, ip: &str) -> reqwest::Response {
    let ip: IpAddr = ip.parse().unwrap();
    auth.call_from(Method::POST, "/auth/login", None, Some(ip))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn repeated_failures_for_a_username_are_429_until_the_window_ends(store: TestStore) {
    let auth = TestAuth::start_with(store, |s| {
        s.login_failures_per_user = 3;
        s.login_failure_window_secs = 300;
    })
    .await;
    auth.signup("target", "password-1").await;
    for i in 0..3 {
        let ip = format!("203.0.113.{i}");
        problem(login_from(&auth, "target", "guess", &ip).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
    let blocked = login_from(&auth, "TARGET", "password-1", "198.51.100.1").await;
    let retry_after: u64 = blocked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after));
    problem(blocked, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;

    auth.clock.advance(Duration::seconds(301));
    assert_eq!(login_from(&auth, "target", "password-1", "198.51.100.1").await.status(), StatusCode::OK);
}

async fn an_address_guessing_many_usernames_is_throttled(store: TestStore) {
    let auth = TestAuth::start_with(store, |s| s.login_failures_per_address = 4).await;
    auth.signup("innocent", "password-1").await;
    for name in ["a_one", "a_two", "a_three", "a_four"] {
        login_from(&auth, name, "guess", "192.0.2.66").await;
    }
    let blocked = login_from(&auth, "innocent", "password-1", "192.0.2.66").await;
    problem(blocked, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert_eq!(login_from(&auth, "innocent", "password-1", "192.0.2.67").await.status(), StatusCode::OK);
}

async fn a_login_storm_is_shed_with_503_not_queued(store: TestStore) {
    let auth = TestAuth::start_with(store, |s| {
        s.hash_concurrency = 1;
        s.hash_queue = 2;
        s.argon2_memory_kib = 4096;
        s.argon2_iterations = 3;
    })
    .await;
    auth.signup("popular", "password-1").await;
    let results = all_at_once(30, |_| {
        auth.call(Method::POST, "/auth/login", None).json(&json!({ "username": "popular", "password": "password-1" }))
    })
    .await;
    let ok = count(&results, StatusCode::OK, None);
    let shed = count(&results, StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(ok + shed, 30, "only 200 or 503, never a 500: {results:?}");
    assert!(ok >= 1 && shed >= 1, "{ok} served, {shed} shed");
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
            .all(|(_, b)| b["code"] == "SERVICE_UNAVAILABLE")
    );
}
