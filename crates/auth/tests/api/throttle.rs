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
    sign_ups_are_limited_per_address_and_per_referrer,
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

async fn signup_from(auth: &TestAuth, username: &str, referrer: Option<&str>, ip: &str) -> reqwest::Response {
    let ip: IpAddr = ip.parse().unwrap();
    let mut body = json!({ "username": username, "password": "password-1" });
    if let Some(referrer) = referrer {
        body["referrer"] = json!(referrer);
    }
    auth.call_from(Method::POST, "/auth/signup", None, Some(ip)).json(&body).send().await.unwrap()
}

/// The attack run's finding: 150 sign-ups naming one referrer from one
/// address met an `inviteFriends(100)` condition in seconds. Now an address
/// gets `signups_per_address` a window, a referrer `referrals_per_referrer`
/// (from any addresses), then 429 with Retry-After; the window's end lets
/// them in again.
async fn sign_ups_are_limited_per_address_and_per_referrer(store: TestStore) {
    let auth = TestAuth::start_with(store, |s| {
        s.signups_per_address = 3;
        s.referrals_per_referrer = 4;
        s.signup_window_secs = 600;
    })
    .await;
    auth.signup("popular", "password-1").await;
    for i in 0..3 {
        let created = signup_from(&auth, &format!("farm_{i}"), Some("popular"), "203.0.113.9").await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let fourth = signup_from(&auth, "farm_3", None, "203.0.113.9").await;
    let retry_after: u64 = fourth.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry_after));
    problem(fourth, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert_eq!(auth.get("/users/farm_3", Some(&auth.admin().await)).await.status(), StatusCode::NOT_FOUND);

    // The referrer's fourth credit comes from another address; the fifth is refused there too.
    assert_eq!(signup_from(&auth, "friend_a", Some("popular"), "198.51.100.1").await.status(), StatusCode::CREATED);
    let fifth = signup_from(&auth, "friend_b", Some("POPULAR"), "198.51.100.2").await;
    problem(fifth, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert_eq!(signup_from(&auth, "friend_b", None, "198.51.100.2").await.status(), StatusCode::CREATED, "without it");

    auth.clock.advance(Duration::seconds(601));
    assert_eq!(signup_from(&auth, "farm_3", Some("popular"), "203.0.113.9").await.status(), StatusCode::CREATED);
}
