//! Bodies streamed both ways, upstream connections kept alive and reused,
//! and a drain that lets in-flight requests finish.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::stream;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::*;

fn chunked(chunks: usize, size: usize) -> reqwest::Body {
    let parts = (0..chunks).map(move |_| Ok::<_, std::io::Error>(vec![b'y'; size]));
    reqwest::Body::wrap_stream(stream::iter(parts))
}

#[tokio::test]
async fn bodies_stream_through_whole_and_a_chunked_body_over_the_limit_is_413() {
    let gw = TestGateway::start_with(|s| s.body_limit = 64 * 1024).await;

    // No Content-Length: the limit is enforced as the body streams.
    let within: Value = gw
        .call(Method::POST, "/echo/upload", None)
        .body(chunked(6, 10_000))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(within["bodyLength"], 60_000);
    assert_eq!(within["headers"]["transfer-encoding"], "chunked");
    let over = gw.call(Method::POST, "/echo/upload", None).body(chunked(10, 10_000)).send().await.unwrap();
    problem(over, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;

    let big = gw.call(Method::GET, "/echo/big", None).send().await.unwrap();
    assert_eq!(big.status(), StatusCode::OK);
    assert_eq!(big.bytes().await.unwrap().len(), BIG_BODY, "a large answer arrives whole");

    let streamed = gw.call(Method::GET, "/echo/stream", None).send().await.unwrap();
    assert_eq!(streamed.headers().get("transfer-encoding").map(|v| v.to_str().unwrap()), Some("chunked"));
    assert_eq!(streamed.bytes().await.unwrap().len(), STREAM_CHUNKS * 1000, "a chunked answer arrives whole");

    // HTTP/1.0 clients and `Expect: 100-continue` uploads are answered too.
    let old = gw.call(Method::GET, "/echo/public", None).version(reqwest::Version::HTTP_10).send().await.unwrap();
    assert_eq!(old.status(), StatusCode::OK);
    let expecting = gw.call(Method::POST, "/echo/upload", None).header("expect", "100-continue").body(vec![b'e'; 5000]);
    let seen: Value = expecting.send().await.unwrap().json().await.unwrap();
    assert_eq!(seen["bodyLength"], 5000);
    assert!(seen["headers"].get("expect").is_none_or(|v| v == "100-continue"));

    let head = gw.call(Method::HEAD, "/echo/public", None).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.bytes().await.unwrap().is_empty());

    // The gateway still answers after all that (no connection left broken).
    let after = gw.call(Method::GET, "/echo/public", None).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let gw = TestGateway::start().await;
    let mut peers = HashSet::new();
    for _ in 0..30 {
        let seen: Value = gw.call(Method::GET, "/echo/public", None).send().await.unwrap().json().await.unwrap();
        peers.insert(seen["peer"].as_str().unwrap().to_owned());
        // A whole answer in between returns its connection to the pool too,
        // with a length or chunked.
        let big = gw.call(Method::GET, "/echo/big", None).send().await.unwrap();
        assert_eq!(big.bytes().await.unwrap().len(), BIG_BODY);
        let streamed = gw.call(Method::GET, "/echo/stream", None).send().await.unwrap();
        assert_eq!(streamed.bytes().await.unwrap().len(), STREAM_CHUNKS * 1000);
    }
    // One client connection lands on one serving thread: one upstream
    // connection carries everything (two would mean a body left one behind).
    assert_eq!(peers.len(), 1, "30 requests came over {} upstream connections", peers.len());
}

#[tokio::test]
async fn a_backend_that_closes_its_connections_still_gets_every_request() {
    let gw = TestGateway::start().await;
    for _ in 0..10 {
        let response = gw.call(Method::GET, "/echo/close", None).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "closing");
        let next = gw.call(Method::GET, "/echo/public", None).send().await.unwrap();
        assert_eq!(next.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_then_stops_accepting() {
    let gw = TestGateway::start().await;
    let url = gw.gateway.url("/echo/wait");
    let in_flight = tokio::spawn({
        let client = gw.gateway.client.clone();
        let url = url.clone();
        async move { client.get(url).send().await.map(|r| (r.status(), r.headers().get("connection").cloned())) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.gateway.shutdown();
    let (status, connection) = in_flight.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(status, StatusCode::OK);
    // Told not to send another request on that connection.
    assert_eq!(connection.as_ref().and_then(|v| v.to_str().ok()), Some("close"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = reqwest::Client::new().get(&url).timeout(Duration::from_secs(2)).send().await;
    assert!(refused.is_err(), "a new connection after the drain: {refused:?}");
}
