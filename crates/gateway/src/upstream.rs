//! Connections to backend instances for forwarded requests.
//!
//! Each serving thread keeps its own pool of keep-alive HTTP/1 connections
//! per instance, and drives them on that thread: a request, its upstream
//! exchange and its answer never leave the thread (no locks, no cross-core
//! wake-ups). A connection goes back to its pool when the response body has
//! been relayed to the end; one whose body was abandoned is closed.
//!
//! The gateway's own calls (health probes, JWKS, OpenAPI documents) are not
//! on the hot path and use the shared [`Client`].

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::FastMap;
use crate::registry::Instance;

/// Pooled keep-alive HTTP/1 connections for the gateway's own calls.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).pool_idle_timeout(IDLE_TIMEOUT).build(connector)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections older than this are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per instance and serving thread.
const MAX_IDLE: usize = 512;

/// The body of a forwarded request: the client's, streamed, with the body
/// limit enforced as it streams (a client that sent no `Content-Length`
/// cannot get past it), or none (a retried GET).
pub enum RequestBody {
    Streamed { body: Incoming, left: u64 },
    Empty,
}

/// A streamed request body went past the limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the gateway accepts")]
pub struct TooLarge;

impl RequestBody {
    pub fn limited(body: Incoming, limit: usize) -> Self {
        Self::Streamed { body, left: limit as u64 }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Streamed { body, left } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    let len = data.map_or(0, |d| d.len() as u64);
                    if len > *left {
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    *left -= len;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streamed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Streamed { body, .. } => body.size_hint(),
        }
    }
}

type Sender = SendRequest<RequestBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections, by instance id.
    static POOLS: RefCell<FastMap<u64, Vec<Idle>>> = RefCell::new(FastMap::default());
    /// This thread's idle connections of the gateway's own HTTP/1 code
    /// ([`crate::plain`]), by instance id.
    static RAW_POOLS: RefCell<FastMap<u64, Vec<(TcpStream, Instant)>>> = RefCell::new(FastMap::default());
}

/// Why a request did not get an answer from the instance.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The exchange failed after (or while) sending.
    Exchange(hyper::Error),
}

impl Failure {
    /// Whether the failure was the client's body going past the limit.
    pub fn is_too_large(&self) -> bool {
        let Failure::Exchange(err) = self else { return false };
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if cause.is::<TooLarge>() {
                return true;
            }
            source = cause.source();
        }
        false
    }
}

/// Sends `request` (origin-form URI, `Host` set) to `instance` on a pooled
/// connection, or a new one. A pooled connection that turns out closed hands
/// the request back unsent, and it goes on a new connection instead.
pub async fn send(instance: &Instance, request: Request<RequestBody>) -> Result<Response<ResponseBody>, Failure> {
    let mut request = request;
    if let Some(mut sender) = take_idle(instance.id) {
        match sender.try_send_request(request).await {
            Ok(response) => return Ok(ResponseBody::wrap(response, instance.id, sender)),
            Err(mut err) => match err.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(Failure::Exchange(err.into_error())),
            },
        }
    }
    // Boxed: connecting is rare, and its future would otherwise be carried
    // (and copied) by every request's future.
    let mut sender = Box::pin(connect(instance)).await?;
    match sender.send_request(request).await {
        Ok(response) => Ok(ResponseBody::wrap(response, instance.id, sender)),
        Err(err) => Err(Failure::Exchange(err)),
    }
}

/// The most recently used idle connection that can take a request now.
fn take_idle(instance: u64) -> Option<Sender> {
    POOLS.with_borrow_mut(|pools| {
        let idle = pools.get_mut(&instance)?;
        let mut at = idle.len();
        while at > 0 {
            at -= 1;
            if idle[at].sender.is_closed() {
                idle.swap_remove(at);
            } else if idle[at].sender.is_ready() {
                return Some(idle.swap_remove(at).sender);
            }
        }
        None
    })
}

fn put_idle(instance: u64, sender: Sender) {
    if sender.is_closed() {
        return;
    }
    POOLS.with_borrow_mut(|pools| keep_idle(pools, instance, Idle { sender, since: Instant::now() }));
}

/// Adds an idle connection to its instance's pool, unless that is full.
fn keep_idle<T>(pools: &mut FastMap<u64, Vec<T>>, instance: u64, connection: T) {
    let idle = pools.entry(instance).or_default();
    if idle.len() < MAX_IDLE {
        idle.push(connection);
    }
}

/// Keeps the idle connections `keep` says to, and drops emptied pools.
fn prune<T>(pools: &mut FastMap<u64, Vec<T>>, mut keep: impl FnMut(&T) -> bool) {
    for idle in pools.values_mut() {
        idle.retain(&mut keep);
    }
    pools.retain(|_, idle| !idle.is_empty());
}

/// A new TCP connection to `instance`, or why there is none.
pub async fn open(instance: &Instance) -> Result<TcpStream, String> {
    let connecting = TcpStream::connect(instance.authority.as_str());
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The most recently used idle connection of the gateway's own HTTP/1
/// code to `instance` that still looks open.
pub fn take_raw(instance: u64) -> Option<TcpStream> {
    RAW_POOLS.with_borrow_mut(|pools| {
        let idle = pools.get_mut(&instance)?;
        while let Some((stream, _)) = idle.pop() {
            if looks_open(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

pub fn put_raw(instance: u64, stream: TcpStream) {
    RAW_POOLS.with_borrow_mut(|pools| keep_idle(pools, instance, (stream, Instant::now())));
}

/// An idle connection has nothing to read: if the runtime saw it become
/// readable, the backend closed it (or sent something unasked). Costs a
/// system call only then.
fn looks_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

async fn connect(instance: &Instance) -> Result<Sender, Failure> {
    let stream = open(instance).await.map_err(Failure::Connect)?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|err| Failure::Connect(err.to_string()))?;
    let url = instance.url.clone();
    tokio::task::spawn_local(async move {
        if let Err(err) = connection.await {
            tracing::debug!(instance = %url, error = %err, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Closes this thread's connections that have been idle too long (called
/// now and then by each serving thread).
pub fn close_idle_here() {
    POOLS.with_borrow_mut(|pools| prune(pools, |i| i.since.elapsed() < IDLE_TIMEOUT && !i.sender.is_closed()));
    RAW_POOLS
        .with_borrow_mut(|pools| prune(pools, |(stream, since)| since.elapsed() < IDLE_TIMEOUT && looks_open(stream)));
}

/// A backend's response body, relayed as it arrives. Its connection returns
/// to the pool once the body has ended; a body dropped before its end takes
/// the connection with it (HTTP/1 cannot resume mid-message).
pub struct ResponseBody {
    inner: Incoming,
    connection: Option<(u64, Sender)>,
}

impl ResponseBody {
    fn wrap(response: Response<Incoming>, instance: u64, sender: Sender) -> Response<Self> {
        response.map(|inner| Self { inner, connection: Some((instance, sender)) })
    }

    fn release(&mut self) {
        if let Some((instance, sender)) = self.connection.take() {
            put_idle(instance, sender);
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            // The server stops polling once the body says it has ended, or
            // once it has the trailers (always the last frame).
            None => this.release(),
            Some(Ok(frame)) if frame.is_trailers() || this.inner.is_end_stream() => this.release(),
            Some(Err(_)) => this.connection = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body that was empty, or relayed whole, leaves a reusable connection.
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}
