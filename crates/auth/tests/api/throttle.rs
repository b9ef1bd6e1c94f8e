//! Brute force: failed logins throttled per username and address, per
//! address and per username from everywhere;
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
    a_guessed_account_is_not_locked_out_from_its_owners_address,
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
    for _ in 0..3 {
        let guess = login_from(&auth, "target", "guess", "203.0.113.5").await;
        problem(guess, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
    let blocked = login_from(&auth, "TARGET", "password-1", "203.0.113.5").await;
    let retry_after: u64 = blocked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after));
    problem(blocked, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;

    auth.clock.advance(Duration::seconds(301));
    assert_eq!(login_from(&auth, "target", "password-1", "203.0.113.5").await.status(), StatusCode::OK);
}

/// The attack run's finding: failed logins locked an account (and everyone
/// behind the attacker's address) for every address. Now an attacker's
/// guesses lock the account at the attacker's address; its owner signs in
/// from another, and so do other players behind the attacker's address; only
/// guesses from many addresses together lock the account everywhere.
async fn a_guessed_account_is_not_locked_out_from_its_owners_address(store: TestStore) {
    let auth = TestAuth::start_with(store, |s| {
        s.login_failures_per_user = 3;
        s.login_failures_per_address = 20;
    })
    .await;
    auth.signup("victim", "password-1").await;
    auth.signup("neighbour", "password-1").await;
    for _ in 0..5 {
        login_from(&auth, "victim", "guess", "203.0.113.66").await;
    }
    problem(
        login_from(&auth, "victim", "password-1", "203.0.113.66").await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
    )
    .await;
    assert_eq!(login_from(&auth, "victim", "password-1", "198.51.100.1").await.status(), StatusCode::OK, "the owner");
    let neighbour = login_from(&auth, "neighbour", "password-1", "203.0.113.66").await;
    assert_eq!(neighbour.status(), StatusCode::OK, "another player behind the same address");

    // Guesses from thirty addresses (ten times the per-user limit) lock it everywhere.
    for i in 0..30 {
        login_from(&auth, "victim", "guess", &format!("192.0.2.{i}")).await;
    }
    problem(
        login_from(&auth, "victim", "password-1", "198.51.100.2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
    )
    .await;
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
