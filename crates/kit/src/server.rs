//! Binding, serving and graceful shutdown.
//!
//! A [`Shutdown`] token is cancelled by SIGINT/SIGTERM (or by a test). Each
//! server then stops accepting, lets in-flight requests finish (up to a drain
//! limit), and returns so its owner can close its store.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
pub use tokio_util::sync::CancellationToken as Shutdown;

/// How long in-flight requests may take to finish after shutdown begins.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// Binds a listener, with an error that says which service could not bind where.
pub async fn bind(service: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{service}: cannot listen on {addr}: {e}"))
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub fn cancel_on_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut sig) => {
                    sig.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
            _ = term => tracing::info!("SIGTERM received, shutting down"),
        }
        shutdown.cancel();
    });
}

/// Binds `threads` listening sockets to one address with `SO_REUSEPORT`, so
/// the kernel spreads connections over them (port 0 picks one port for all).
pub fn bind_reuseport(service: &str, addr: SocketAddr, threads: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let bind_one = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    let first = bind_one(addr).map_err(|e| anyhow::anyhow!("{service}: cannot listen on {addr}: {e}"))?;
    let actual = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads.max(1) {
        listeners.push(bind_one(actual).map_err(|e| anyhow::anyhow!("{service}: cannot listen on {actual}: {e}"))?);
    }
    Ok(listeners)
}

/// Serves `router` on `listener` until `shutdown`, then drains.
pub async fn serve(service: &str, listener: TcpListener, router: Router, shutdown: Shutdown) -> anyhow::Result<()> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let signal = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { signal.cancelled().await });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => result?,
        _ = shutdown.cancelled() => {
            // Graceful shutdown has begun inside `server`; bound how long it drains.
            match tokio::time::timeout(DRAIN_LIMIT, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(service, "in-flight requests did not finish within {DRAIN_LIMIT:?}; closing"),
            }
        }
    }
    tracing::info!(service, "stopped serving");
    Ok(())
}
