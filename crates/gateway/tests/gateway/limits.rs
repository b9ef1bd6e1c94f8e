//! Rate limits per address and per user; slow and idle clients cut off.

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

/// Reads until the gateway closes the connection; what it sent before.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_slow_to_send_its_request_head_or_idle_too_long_is_cut_off() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::start_with(|s| s.header_timeout_ms = 300).await;
    let address = gw.gateway.addr();

    // A head that never ends (a slow-loris client): closed after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /echo/public HTTP/1.1\r\nhost: gateway\r\nx-one: more").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut slow)).await;
    let waited = started.elapsed();
    assert!(closed.is_ok(), "a head left unfinished keeps its connection for good");
    assert!(waited >= Duration::from_millis(290), "not before the timeout: {waited:?}");
    assert_eq!(gw.echo.hits(), 0, "nothing was forwarded");

    // A whole request is answered; the connection left idle after it is closed.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /echo/public HTTP/1.1\r\nhost: gateway\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut idle)).await.expect("closed when idle");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "answered first");
    assert!(started.elapsed() >= Duration::from_millis(290), "kept alive until the timeout");

    // Requests that keep coming on one connection are not cut off.
    let client = reqwest::Client::new();
    for _ in 0..8 {
        let response = client.get(gw.gateway.url("/echo/public")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
