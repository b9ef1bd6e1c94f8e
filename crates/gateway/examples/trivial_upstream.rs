//! A trivial upstream for the gateway benchmark (`bench/gateway.sh`):
//! answers `GET /hello` with a short body, and `/health` for the gateway's
//! health checker.
//!
//! Usage: `trivial_upstream 127.0.0.1:18080`

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let app = Router::new().route("/hello", get(|| async { "hello" })).route("/health", get(|| async { "ok" }));
    axum::serve(listener, app).await?;
    Ok(())
}
