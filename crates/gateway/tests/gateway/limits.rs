//! Rate limits per address and per user.

use reqwest::{Method, StatusCode};

use crate::support::*;

#[tokio::test]
async fn an_address_over_its_rate_gets_429_with_retry_after() {
    let gw = TestGateway::start_with(|s| {
        s.rate_per_address = 1;
        s.burst_per_address = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(gw.call(Method::GET, "/echo/public", None).send().await.unwrap());
    }
    let limited: Vec<_> = statuses.into_iter().filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(limited.len() >= 2, "{} limited", limited.len());
    for response in limited {
        let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
        problem(response, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    }
}

#[tokio::test]
async fn a_user_over_its_rate_gets_429_while_others_pass() {
    let gw = TestGateway::start_with(|s| {
        s.rate_per_user = 1;
        s.burst_per_user = 3;
    })
    .await;
    let t = gw.tokens().await;
    let mut limited = 0;
    for _ in 0..6 {
        if gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status()
            == StatusCode::TOO_MANY_REQUESTS
        {
            limited += 1;
        }
    }
    assert!(limited >= 2, "{limited}");
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&t.operator)).send().await.unwrap().status(), StatusCode::OK);
}
