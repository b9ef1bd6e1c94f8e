//! Serving: one single-threaded runtime per listening socket, each on a thread
//! of its own (the kernel spreads connections over the `SO_REUSEPORT`
//! sockets). A client connection, the requests on it, their upstream
//! exchanges and the answers all stay on the thread that accepted it.
//!
//! Requests for the gateway's own paths (`/health`, `/gateway/services`, ...)
//! go to its axum router with the kit's layer stack; everything else goes
//! straight into the forwarding pipeline ([`crate::proxy`]), which does the
//! same duties (request id, access log, panics as 500) without a router's
//! per-request boxing and cloning.

use std::cell::RefCell;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use rewards_kit::Problem;
use rewards_kit::server::{DRAIN_LIMIT, Shutdown};
use slab::Slab;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::Gateway;
use crate::body::GatewayBody;
use crate::proxy::{self, Here, Peer};
use crate::registry::is_reserved;

/// What every request on one serving thread shares.
pub(crate) struct ThreadState {
    pub(crate) gateway: Arc<Gateway>,
    own: Router,
    pub(crate) here: Here,
}

/// Serves on every listener until `shutdown`, then lets in-flight requests
/// finish (up to [`DRAIN_LIMIT`]). Returns when every thread has stopped.
pub async fn serve(
    gateway: Arc<Gateway>,
    own: Router,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut done = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (gateway, own, shutdown) = (gateway.clone(), own.clone(), shutdown.clone());
        std::thread::Builder::new().name(format!("{}-{i}", crate::NAME)).spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    let local = tokio::task::LocalSet::new();
                    let here = Here::new(&gateway);
                    // The LocalSet polls the future it runs on every wake-up of any
                    // of its tasks: a join handle is cheaper to poll than the
                    // accept loop itself.
                    let serving = ThreadState { gateway, own, here };
                    local.block_on(&runtime, async move {
                        tokio::task::spawn_local(serve_thread(serving, listener, shutdown))
                            .await
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a gateway serving thread panicked")))
                    })
                });
            let _ = tx.send(result);
        })?;
        done.push(rx);
    }
    let mut first_error = None;
    for rx in done {
        let result = rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("a gateway serving thread died")));
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    tracing::info!(service = crate::NAME, "stopped serving");
    first_error.map_or(Ok(()), Err)
}

async fn serve_thread(state: ThreadState, listener: std::net::TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let state = Rc::new(state);
    let connections = Rc::new(Drain::default());
    tokio::task::spawn_local(upkeep());
    crate::deadline::spawn_ticker();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // Counted as open from now, before its task first runs, so a drain waits for it too.
                    let watched = Drain::watch(&connections);
                    tokio::task::spawn_local(crate::plain::serve(state.clone(), stream, peer, watched));
                }
                Err(err) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_LIMIT, connections.shutdown()).await.is_err() {
        tracing::warn!(service = crate::NAME, "in-flight requests did not finish within {DRAIN_LIMIT:?}; closing");
    }
    Ok(())
}

/// One serving thread's open connections, told to finish their requests and
/// close when the gateway stops. (hyper-util's `GracefulShutdown` does this
/// with a watch channel that every connection polls on every wake-up; here a
/// connection looks at a flag and compares a waker.)
#[derive(Default)]
struct Drain(RefCell<DrainState>);

#[derive(Default)]
struct DrainState {
    closing: bool,
    /// Each open connection's waker, to wake it when closing begins.
    open: Slab<Option<Waker>>,
    /// Who waits for the last connection to close.
    drained: Option<Waker>,
}

/// A connection's place among the open ones, given up when it closes.
pub(crate) struct Watched {
    drain: Rc<Drain>,
    key: usize,
}

impl Watched {
    /// Whether closing has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.drain.0.borrow().closing
    }

    /// Whether closing has begun; if not, `waker` is woken when it does.
    pub(crate) fn closing(&self, waker: &Waker) -> bool {
        let mut state = self.drain.0.borrow_mut();
        if state.closing {
            return true;
        }
        crate::deadline::keep_waker(&mut state.open[self.key], waker);
        false
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let drained = {
            let mut state = self.drain.0.borrow_mut();
            state.open.remove(self.key);
            if state.open.is_empty() { state.drained.take() } else { None }
        };
        // Woken outside the borrow.
        if let Some(drained) = drained {
            drained.wake();
        }
    }
}

impl Drain {
    /// A new open connection, counted until its `Watched` is dropped.
    fn watch(drain: &Rc<Self>) -> Watched {
        let key = drain.0.borrow_mut().open.insert(None);
        Watched { drain: drain.clone(), key }
    }

    /// Serves a hyper `connection` until it closes, or until closing begins
    /// and its in-flight request is answered.
    async fn serve_watched<C: GracefulConnection>(watched: &Watched, connection: C) {
        let mut connection = std::pin::pin!(connection);
        let mut asked_to_close = false;
        // How a connection ends (a client gone mid-request, say) is the client's business.
        let _ = std::future::poll_fn(|cx| {
            if !asked_to_close && watched.closing(cx.waker()) {
                connection.as_mut().graceful_shutdown();
                asked_to_close = true;
            }
            connection.as_mut().poll(cx)
        })
        .await;
    }

    /// Tells every open connection to close, and waits until all have.
    async fn shutdown(&self) {
        let wakers: Vec<Waker> = {
            let mut state = self.0.borrow_mut();
            state.closing = true;
            state.open.iter_mut().filter_map(|(_, waker)| waker.take()).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        std::future::poll_fn(|cx| {
            let mut state = self.0.borrow_mut();
            if state.open.is_empty() {
                return Poll::Ready(());
            }
            state.drained = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// This thread's share of the upkeep: idle upstream connections closed,
/// expired tokens forgotten.
async fn upkeep() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tick.tick().await;
        crate::upstream::close_idle_here();
        crate::jwt::forget_expired_here();
    }
}

/// Serves the rest of a client connection with hyper (see [`crate::plain`]
/// for which connections come here), until it closes or the drain ends it.
pub(crate) async fn serve_with_hyper<I>(state: Rc<ThreadState>, peer: Rc<Peer>, io: I, watched: &Watched)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    Drain::serve_watched(watched, hyper_connection(state, io, peer)).await
}

fn hyper_connection<I>(
    state: Rc<ThreadState>,
    io: I,
    peer: Rc<Peer>,
) -> hyper::server::conn::http1::Connection<
    TokioIo<I>,
    impl hyper::service::HttpService<Incoming, ResBody = GatewayBody, Error = Infallible>,
>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    // Slow clients (a head sent a byte at a time) and idle keep-alive
    // connections are closed after this (0: never).
    let header_timeout = std::time::Duration::from_millis(state.gateway.settings.header_timeout_ms);
    let service = hyper::service::service_fn(move |request| {
        let (state, peer) = (state.clone(), peer.clone());
        async move { Ok::<_, Infallible>(handle(&state, &peer, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    if !header_timeout.is_zero() {
        builder.timer(crate::deadline::ThreadTimer).header_read_timeout(header_timeout);
    }
    builder.serve_connection(TokioIo::new(io), service)
}

async fn handle(state: &ThreadState, peer: &Peer, request: Request<Incoming>) -> Response<GatewayBody> {
    if is_reserved(request.uri().path()) {
        // Boxed too: the router's future is large, and rarely needed.
        return Box::pin(own_route(state, peer, request)).await;
    }
    // Boxed once here: a request's future is a few kilobytes, and every layer
    // above would otherwise hold (and copy) it whole.
    let forwarding = Box::pin(proxy::forward(&state.gateway, &state.here, peer, request));
    match AssertUnwindSafe(forwarding).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("forwarding a request panicked");
            crate::body::local(Problem::internal())
        }
    }
}

/// The gateway's own paths, through its router and the kit's layer stack.
async fn own_route(state: &ThreadState, peer: &Peer, request: Request<Incoming>) -> Response<GatewayBody> {
    let mut request = request.map(axum::body::Body::new);
    request.extensions_mut().insert(ConnectInfo(peer.addr));
    let response = state.own.clone().oneshot(request).await.unwrap_or_else(|never| match never {});
    response.map(GatewayBody::Local)
}
