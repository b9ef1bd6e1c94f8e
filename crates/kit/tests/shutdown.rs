//! Graceful shutdown: listeners close, in-flight requests finish.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rewards_kit::server::{self, Shutdown};

#[tokio::test]
async fn in_flight_requests_finish_after_shutdown_begins_and_new_ones_are_refused() {
    let routes = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "finished"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(server::serve("test", listener, routes, shutdown.clone()));

    let client = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get(format!("http://{addr}/slow")).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();

    assert_eq!(in_flight.await.unwrap(), "finished");
    serving.await.unwrap().unwrap();
    let refused = reqwest::Client::new().get(format!("http://{addr}/slow")).send().await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}
