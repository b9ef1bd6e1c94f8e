//! Plain requests, served by the gateway's own HTTP/1.1 code.
//!
//! Nearly every request a game client sends through the gateway is a GET,
//! or a POST/DELETE without a body, on a keep-alive connection. Served by
//! hyper and forwarded by hyper, such a request costs more than nginx spends
//! on the whole exchange: its head parsed into a header map, the map
//! rewritten and encoded again for the upstream, the answer parsed into
//! another map, passed between the connection's tasks and encoded once
//! more. Here the request head is parsed in place, the upstream request is
//! written straight from it, and the upstream's answer is relayed with the
//! few changes it needs, all in the client connection's own task: a request
//! costs the two heads parsed, two written, and four system calls.
//!
//! The pipeline's phases are the same ones, shared with [`crate::proxy`]
//! (route, limits, token, rule, identity proof, timeout, problem answers,
//! metrics, access log). Anything this code does not take (a request body,
//! `Expect`, an upgrade, HTTP/1.0, the gateway's own paths, a malformed or
//! oversized head) hands the connection, with the bytes already read, to
//! hyper for the rest of its life.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use rewards_kit::Problem;
use rewards_kit::http::{is_sane_request_id, log_served_after, new_request_id_text_at};
use rewards_kit::identity::IDENTITY_HEADER;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::deadline;
use crate::jwt::Verified;
use crate::proxy::{self, Peer};
use crate::registry::{Instance, Route, Service, is_reserved};
use crate::server::{ThreadState, Watched, serve_with_hyper};
use crate::upstream;
use crate::wire::{self, Answer, Chunks, Framing, MAX_HEADERS, Plain};

/// Headers of a locally made answer that its writer sets itself.
const WRITTEN_HERE: [header::HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::DATE,
    rewards_kit::http::REQUEST_ID,
];

/// Logged and counted for a client that left in the middle of sending its
/// body (nginx's "client closed request").
const CLIENT_CLOSED: u16 = 499;

/// A connection's read buffer starts this large and grows up to
/// [`MAX_HEAD`]; a head larger than that goes to hyper (which takes heads
/// up to about 400 KiB).
const INBOUND_START: usize = 4096;
const MAX_HEAD: usize = 64 * 1024;
/// Upstream answers are read (and bodies relayed) this much at a time.
const UPSTREAM_BUFFER: usize = 16 * 1024;
/// The largest upstream answer head, and the most headers it may have (as
/// hyper's client takes).
const MAX_UPSTREAM_HEAD: usize = 256 * 1024;
const MAX_ANSWER_HEADERS: usize = 100;
/// The most of an unforwarded request body (one refused at the gateway, a
/// 401 say) read and dropped to keep its connection; after more, the
/// connection is closed instead.
const DISCARD_MAX: u64 = 64 * 1024;

/// Serves one client connection: plain requests here, one after another,
/// until the client or the drain closes it or a request needs hyper.
pub async fn serve(state: Rc<ThreadState>, stream: TcpStream, peer: SocketAddr, watched: Watched) {
    let peer = Rc::new(Peer::new(peer));
    let header_timeout = Duration::from_millis(state.gateway.settings.header_timeout_ms);
    let timeout = (!header_timeout.is_zero()).then_some(header_timeout);
    let mut client = Client { stream, wrote: false, timeout };
    let mut inbound = Inbound::new();
    'requests: loop {
        // Slow clients (a head sent a byte at a time) and idle keep-alive
        // connections are closed once this passes.
        let due = (!header_timeout.is_zero()).then(|| Instant::now() + header_timeout);
        loop {
            if !inbound.pending().is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut request = httparse::Request::new(&mut headers);
                let to_hyper = match request.parse(inbound.pending()) {
                    Ok(httparse::Status::Complete(len)) => {
                        match wire::classify(&request).filter(|plain| !is_reserved(plain.path)) {
                            Some(plain) => {
                                // What of the body has arrived with the head.
                                let after = &inbound.pending()[len..];
                                let body_here = &after[..plain.body_length.min(after.len() as u64) as usize];
                                let keep =
                                    serve_request(&state, &peer, &mut client, &request, &plain, body_here, &watched)
                                        .await;
                                inbound.consume(len + body_here.len());
                                if !keep || watched.is_closing() {
                                    return;
                                }
                                continue 'requests;
                            }
                            None => true,
                        }
                    }
                    Ok(httparse::Status::Partial) => inbound.pending().len() >= MAX_HEAD,
                    // hyper answers a head it cannot parse either.
                    Err(_) => true,
                };
                if to_hyper {
                    let io = Rewound { read: inbound.into_pending(), at: 0, stream: client.stream };
                    return serve_with_hyper(state, peer, io, &watched).await;
                }
            }
            match inbound.read_from(&mut client.stream, &watched, due).await {
                Read::More => {}
                Read::Ended => return,
            }
        }
    }
}

/// What a client has sent and the gateway has not yet served.
struct Inbound {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

enum Read {
    More,
    /// The client closed, the head took too long, or the drain began.
    Ended,
}

impl Inbound {
    fn new() -> Self {
        Self { buf: vec![0; INBOUND_START], start: 0, end: 0 }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    fn into_pending(mut self) -> Vec<u8> {
        self.buf.truncate(self.end);
        self.buf.drain(..self.start);
        self.buf
    }

    /// Reads what the client sends next, until `due`.
    async fn read_from(&mut self, stream: &mut TcpStream, watched: &Watched, due: Option<Instant>) -> Read {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            self.buf.resize((self.buf.len() * 2).min(MAX_HEAD), 0);
        }
        let space = &mut self.buf[self.end..];
        let reading = std::future::poll_fn(|cx| {
            // A drain closes a connection that is between requests.
            if watched.closing(cx.waker()) {
                return Poll::Ready(Ok(0));
            }
            let mut read = ReadBuf::new(space);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            Poll::Ready(Ok::<_, std::io::Error>(read.filled().len()))
        });
        let read = match due {
            Some(due) => deadline::until(due, reading).await.unwrap_or(Ok(0)),
            None => reading.await,
        };
        match read {
            Ok(n) if n > 0 => {
                self.end += n;
                Read::More
            }
            _ => Read::Ended,
        }
    }
}

/// The client's side of the connection, knowing whether an answer has
/// begun (after that, a failure can only close the connection).
struct Client {
    stream: TcpStream,
    wrote: bool,
    /// How long an answer may wait for the client to read it, and a refused
    /// body for the client to send it (`header_timeout_ms`; none: for ever).
    timeout: Option<Duration>,
}

impl Client {
    /// Writes `bytes`, or fails when the client leaves them unread for the
    /// send timeout (a client that asks and never reads must not hold an
    /// upstream connection for good).
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wrote = true;
        // Nearly always the socket takes it all at once: no deadline then.
        let sent = match self.stream.try_write(bytes) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(err) => return Err(err),
        };
        let rest = &bytes[sent..];
        if rest.is_empty() {
            return Ok(());
        }
        let writing = self.stream.write_all(rest);
        match self.timeout {
            Some(timeout) => deadline::until(Instant::now() + timeout, writing)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => writing.await,
        }
    }
}

/// How a request went, for the log, and whether its connection goes on.
struct Served {
    status: StatusCode,
    keep: bool,
}

async fn serve_request(
    state: &ThreadState,
    peer: &Peer,
    client: &mut Client,
    request: &httparse::Request<'_, '_>,
    plain: &Plain<'_>,
    body_here: &[u8],
    closing: &Watched,
) -> bool {
    let started = Instant::now();
    let now = SystemTime::now();
    // The client's request id when it is sane, else a fresh one; either way
    // the only one the backend sees.
    let fresh;
    let request_id = match plain.request_id.filter(|id| is_sane_request_id(id)) {
        Some(id) => id,
        None => {
            fresh = new_request_id_text_at(now);
            &fresh[..]
        }
    };
    let span = tracing::info_span!("request", service = crate::NAME,
        request_id = std::str::from_utf8(request_id).unwrap_or(""), method = %plain.method, path = plain.path);
    let unread = Cell::new(plain.body_length - body_here.len() as u64);
    let exchange = Exchange {
        state,
        peer,
        plain,
        headers: request.headers,
        request_id,
        body_here,
        unread,
        closing,
        started,
        answered_at: Cell::new(None),
        now,
    };
    let mut scratch = Scratch::take();
    let served = AssertUnwindSafe(exchange.run(client, &mut scratch).instrument(span.clone())).catch_unwind().await;
    let served = match served {
        Ok(served) => served,
        Err(_) => {
            tracing::error!("forwarding a request panicked");
            // Answered with a 500 unless an answer had begun.
            if !client.wrote {
                exchange.answer_locally(client, &mut scratch, Problem::internal(), true).await;
            }
            Served { status: StatusCode::INTERNAL_SERVER_ERROR, keep: false }
        }
    };
    log_served_after(&span, served.status, exchange.took());
    // A body the backend did not get is read to its end, so that the next
    // request's head is where the connection goes on.
    let unread = exchange.unread.get();
    if served.keep && unread > 0 {
        return discard(client, unread, &mut scratch).await;
    }
    served.keep
}

/// Reads and drops `len` bytes of a request body; whether they all came.
async fn discard(client: &mut Client, len: u64, scratch: &mut Scratch) -> bool {
    let timeout = client.timeout;
    let reading = async {
        let mut left = len;
        while left > 0 {
            let want = left.min(scratch.up.len() as u64) as usize;
            match client.stream.read(&mut scratch.up[..want]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => left -= n as u64,
            }
        }
        true
    };
    match timeout {
        Some(timeout) => deadline::until(Instant::now() + timeout, reading).await.unwrap_or(false),
        None => reading.await,
    }
}

/// One plain request on its way through the pipeline.
struct Exchange<'a> {
    state: &'a ThreadState,
    peer: &'a Peer,
    plain: &'a Plain<'a>,
    headers: &'a [httparse::Header<'a>],
    request_id: &'a [u8],
    /// The part of the body that came with the head.
    body_here: &'a [u8],
    /// The part of the body still to be read from the client.
    unread: Cell<u64>,
    /// Tells when the gateway has begun to stop.
    closing: &'a Watched,
    started: Instant,
    /// When the answer's head went out (the latency metrics and the access
    /// log report, as on the hyper path).
    answered_at: Cell<Option<Instant>>,
    now: SystemTime,
}

/// Why an upstream exchange did not give an answer to relay.
enum Failure {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// A kept-alive connection turned out closed before any answer came.
    Stale(String),
    Exchange(String),
    /// The client went away in the middle of sending its body.
    ClientGone,
}

/// An upstream connection whose answer's head has been read (the client's
/// version of it is in `Scratch::out`).
struct Upstream {
    stream: TcpStream,
    answer: Answer,
    /// The body read with the head, in `Scratch::up`.
    body: std::ops::Range<usize>,
    /// The rest of a body with a length.
    left: u64,
    /// Where a chunked body is.
    chunks: Chunks,
    /// The connection can be used again once the body has been relayed.
    reusable: bool,
    /// The client connection ends after this answer.
    close: bool,
}

impl Exchange<'_> {
    fn answered(&self) {
        self.answered_at.set(Some(Instant::now()));
    }

    fn took(&self) -> Duration {
        self.answered_at.get().unwrap_or_else(Instant::now) - self.started
    }

    async fn run(&self, client: &mut Client, scratch: &mut Scratch) -> Served {
        let (gateway, here, plain) = (&*self.state.gateway, &self.state.here, self.plain);
        let registry = here.registry(gateway);
        let Some((service, rest)) = registry.resolve(plain.path) else {
            let problem = Problem::not_found(format!("no route for {}", plain.path));
            return self.answer_locally(client, scratch, problem, self.close_after_local()).await;
        };
        // A path under a known prefix that no rule names is never forwarded.
        let Some(route) = service.route(&plain.method, rest) else {
            let problem = Problem::not_found(format!("no route for {} {}", plain.method, plain.path));
            let served = self.answer_locally(client, scratch, problem, self.close_after_local()).await;
            here.metrics.record(service, None, None, served.status, self.took());
            return served;
        };
        let length = (plain.body_length > 0).then_some(plain.body_length);
        let (served, upstream) =
            match proxy::admit(gateway, route, self.peer, plain.authorization, length, self.now).await {
                Ok(caller) => self.relay(client, scratch, service, route, caller.as_deref()).await,
                Err(problem) => (self.answer_locally(client, scratch, problem, self.close_after_local()).await, None),
            };
        here.metrics.record(service, Some(route), upstream, served.status, self.took());
        served
    }

    /// Sends the request to a healthy instance and relays the answer.
    async fn relay<'s>(
        &self,
        client: &mut Client,
        scratch: &mut Scratch,
        service: &'s Service,
        route: &Route,
        caller: Option<&Verified>,
    ) -> (Served, Option<&'s Instance>) {
        let (gateway, plain) = (&*self.state.gateway, self.plain);
        let Some(mut instance) = service.pick(None).map(|i| &**i) else {
            return (
                self.answer_locally(client, scratch, proxy::no_healthy_instance(service), self.close_after_local())
                    .await,
                None,
            );
        };
        let path_and_query = proxy::backend_path(plain.path, plain.query, service.prefix.len());
        let proof = proxy::vouch(gateway, self.peer, caller, &plain.method, &path_and_query, self.now);
        let timeout = route.timeout.unwrap_or(Duration::from_millis(gateway.settings.timeout_ms));
        // A GET or HEAD may go to another instance when the first cannot be
        // reached (nothing was sent, so nothing happens twice).
        let elsewhere =
            service.instances.len() > 1 && matches!(plain.method, Method::GET | Method::HEAD) && plain.body_length == 0;
        let mut fresh_connection = false;
        loop {
            scratch.out.clear();
            let identity = IDENTITY_HEADER;
            let ours: [(&[u8], &[u8]); 4] = [
                (b"x-forwarded-for", self.peer.forwarded_for.as_bytes()),
                (b"x-forwarded-proto", b"http"),
                (b"x-request-id", self.request_id),
                (identity.as_str().as_bytes(), proof.as_bytes()),
            ];
            let host = instance.host.as_bytes();
            wire::write_upstream_head(&mut scratch.out, plain, &path_and_query, host, self.headers, &ours);
            // What of the body is here goes out with the head.
            scratch.out.extend_from_slice(self.body_here);
            // Each attempt (a retry on another instance too) gets the whole timeout.
            let due = Instant::now() + timeout;
            let failure = match deadline::until(due, self.exchange(client, instance, scratch, fresh_connection)).await {
                Ok(Ok(upstream)) => {
                    return (self.relay_answer(client, scratch, instance, upstream).await, Some(instance));
                }
                Ok(Err(failure)) => failure,
                Err(deadline::Elapsed) => {
                    tracing::warn!(service = %service.name, instance = %instance.url, ?timeout, "upstream timed out");
                    let problem = proxy::timed_out(service);
                    return (
                        self.answer_locally(client, scratch, problem, self.close_after_local()).await,
                        Some(instance),
                    );
                }
            };
            match failure {
                // The backend closed a kept-alive connection as the request
                // went out: once more on a new connection, when that is safe.
                Failure::Stale(_) if plain.is_repeatable() && !fresh_connection => fresh_connection = true,
                // Nobody to answer.
                Failure::ClientGone => {
                    let status = StatusCode::from_u16(CLIENT_CLOSED).expect("a three-digit status");
                    return (Served { status, keep: false }, Some(instance));
                }
                Failure::Connect(err) => {
                    tracing::warn!(service = %service.name, instance = %instance.url, error = %err, "instance unreachable");
                    crate::health::mark(service, instance, false);
                    match service.pick(Some(instance)).filter(|_| elsewhere) {
                        Some(other) => instance = other,
                        None => {
                            let problem = proxy::unreachable(service);
                            return (
                                self.answer_locally(client, scratch, problem, self.close_after_local()).await,
                                Some(instance),
                            );
                        }
                    }
                }
                Failure::Stale(err) | Failure::Exchange(err) => {
                    tracing::warn!(service = %service.name, instance = %instance.url, error = %err, "upstream failed");
                    let problem = proxy::failed_to_answer(service);
                    return (
                        self.answer_locally(client, scratch, problem, self.close_after_local()).await,
                        Some(instance),
                    );
                }
            }
        }
    }

    /// Writes the upstream request (in `scratch.out`) on a pooled or new
    /// connection and reads the answer's head, skipping interim (1xx) ones.
    async fn exchange(
        &self,
        client: &mut Client,
        instance: &Instance,
        scratch: &mut Scratch,
        fresh: bool,
    ) -> Result<Upstream, Failure> {
        let pooled = if fresh { None } else { upstream::take_raw(instance.id) };
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(stream) => stream,
            // Boxed: connecting is rare, and its future would otherwise be
            // carried by every connection's.
            None => Box::pin(upstream::open(instance)).await.map_err(Failure::Connect)?,
        };
        let lost = |why: String| if reused { Failure::Stale(why) } else { Failure::Exchange(why) };
        stream.write_all(&scratch.out).await.map_err(|err| lost(err.to_string()))?;
        // The rest of the body, streamed from the client as it comes.
        while self.unread.get() > 0 {
            let want = self.unread.get().min(scratch.up.len() as u64) as usize;
            let n = match client.stream.read(&mut scratch.up[..want]).await {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(n) => n,
            };
            self.unread.set(self.unread.get() - n as u64);
            stream.write_all(&scratch.up[..n]).await.map_err(|err| Failure::Exchange(err.to_string()))?;
        }
        let (mut start, mut filled) = (0, 0);
        loop {
            if filled == scratch.up.len() {
                if start > 0 {
                    scratch.up.copy_within(start..filled, 0);
                    (start, filled) = (0, filled - start);
                } else if scratch.up.len() < MAX_UPSTREAM_HEAD {
                    // A head with large headers (many cookies, say).
                    scratch.up.resize(scratch.up.len() * 4, 0);
                } else {
                    return Err(Failure::Exchange(wire::BadAnswer::TooLarge.to_string()));
                }
            }
            let n = match stream.read(&mut scratch.up[filled..]).await {
                Ok(0) if filled == 0 => return Err(lost("closed without answering".into())),
                Ok(0) => return Err(Failure::Exchange("closed in the middle of an answer".into())),
                Ok(n) => n,
                Err(err) if filled == 0 => return Err(lost(err.to_string())),
                Err(err) => return Err(Failure::Exchange(err.to_string())),
            };
            filled += n;
            // Every head that has arrived (interim ones are skipped).
            loop {
                let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                let len = match response.parse(&scratch.up[start..filled]) {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) => break,
                    Err(err) => return Err(Failure::Exchange(wire::BadAnswer::from(err).to_string())),
                };
                let to_head = self.plain.method == Method::HEAD;
                let answer = match wire::answer_of(&response, to_head) {
                    Ok(Some(answer)) => answer,
                    Ok(None) => {
                        start += len;
                        continue;
                    }
                    Err(bad) => return Err(Failure::Exchange(bad.to_string())),
                };
                // What of the bytes read is body (a bad chunk there is a
                // 502 still); anything after it is an answer nobody asked for.
                let (body, buffered) = (start + len, &scratch.up[start + len..filled]);
                let mut chunks = Chunks::default();
                let (belongs, left) = match answer.framing {
                    Framing::Empty => (0, 0),
                    Framing::Length(length) => {
                        let here = length.min(buffered.len() as u64);
                        (here as usize, length - here)
                    }
                    Framing::Chunked => {
                        (chunks.advance(buffered).map_err(|bad| Failure::Exchange(bad.to_string()))?, 0)
                    }
                    Framing::UntilClose => (buffered.len(), 0),
                };
                let close = self.plain.close
                    || self.closing.is_closing()
                    || answer.ambiguous
                    || answer.framing == Framing::UntilClose;
                scratch.out.clear();
                wire::write_client_head(&mut scratch.out, &response, &answer, self.request_id, close);
                let reusable = answer.reusable && belongs == buffered.len();
                let body = body..body + belongs;
                return Ok(Upstream { stream, answer, body, left, chunks, reusable, close });
            }
        }
    }

    /// Relays an upstream answer: its head (in `scratch.out`) with the body
    /// read so far, then the rest as it arrives. The upstream connection
    /// goes back to the pool when the body ended where its framing said and
    /// nothing followed it.
    async fn relay_answer(
        &self,
        client: &mut Client,
        scratch: &mut Scratch,
        instance: &Instance,
        upstream: Upstream,
    ) -> Served {
        let Upstream { mut stream, answer, body, mut left, mut chunks, mut reusable, close } = upstream;
        let status = answer.status;
        let broken = Served { status, keep: false };
        let Scratch { up, out } = scratch;
        out.extend_from_slice(&up[body]);
        let written = client.write_all(out).await;
        self.answered();
        if written.is_err() {
            return broken;
        }
        let mut more = match answer.framing {
            Framing::Empty => false,
            Framing::Length(_) => left > 0,
            Framing::Chunked => !chunks.is_done(),
            Framing::UntilClose => true,
        };
        while more {
            let n = match stream.read(up).await {
                Ok(0) if answer.framing == Framing::UntilClose => break,
                Ok(0) | Err(_) => return broken,
                Ok(n) => n,
            };
            let belongs = match answer.framing {
                Framing::Length(_) => {
                    let here = left.min(n as u64);
                    left -= here;
                    more = left > 0;
                    here as usize
                }
                Framing::Chunked => match chunks.advance(&up[..n]) {
                    Ok(belongs) => {
                        more = !chunks.is_done();
                        belongs
                    }
                    Err(_) => return broken,
                },
                _ => n,
            };
            reusable &= belongs == n;
            if client.write_all(&up[..belongs]).await.is_err() {
                return broken;
            }
        }
        if reusable {
            upstream::put_raw(instance.id, stream);
        }
        Served { status, keep: !close }
    }

    /// Whether a connection ends after an answer the gateway makes itself:
    /// when the client asked, or when too much of its body is left to read.
    fn close_after_local(&self) -> bool {
        self.plain.close || self.closing.is_closing() || self.unread.get() > DISCARD_MAX
    }

    /// An answer the gateway makes itself (problem+json).
    async fn answer_locally(
        &self,
        client: &mut Client,
        scratch: &mut Scratch,
        problem: Problem,
        close: bool,
    ) -> Served {
        let (parts, body) = crate::body::local(problem).into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let out = &mut scratch.out;
        out.clear();
        wire::write_status_line(out, parts.status, None);
        for (name, value) in &parts.headers {
            if !WRITTEN_HERE.contains(name) {
                wire::write_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        wire::write_number_header(out, b"content-length", body.len() as u64);
        wire::write_date(out);
        wire::finish_client_head(out, self.request_id, close);
        out.extend_from_slice(&body);
        let written = client.write_all(out).await.is_ok();
        self.answered();
        Served { status: parts.status, keep: written && !close }
    }
}

/// A request's buffers: the upstream's answer as it is read, and what is
/// written next (the upstream request, then the client's answer head).
/// Kept per thread between requests, so a request allocates none.
struct Scratch {
    up: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static SPARE: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

/// Spare buffers kept per thread (more in use at once are allocated and freed).
const MAX_SPARE: usize = 256;

impl Scratch {
    fn take() -> ScratchGuard {
        let scratch = SPARE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Scratch { up: vec![0; UPSTREAM_BUFFER], out: Vec::with_capacity(2048) });
        ScratchGuard(Some(scratch))
    }
}

struct ScratchGuard(Option<Scratch>);

impl std::ops::Deref for ScratchGuard {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        self.0.as_ref().expect("scratch until dropped")
    }
}

impl std::ops::DerefMut for ScratchGuard {
    fn deref_mut(&mut self) -> &mut Scratch {
        self.0.as_mut().expect("scratch until dropped")
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(mut scratch) = self.0.take() {
            // An unusually large answer head grew them: not kept at that size.
            if scratch.up.len() > UPSTREAM_BUFFER {
                scratch.up = vec![0; UPSTREAM_BUFFER];
            }
            if scratch.out.capacity() <= 64 * 1024 {
                scratch.out.clear();
                SPARE.with_borrow_mut(|spare| {
                    if spare.len() < MAX_SPARE {
                        spare.push(scratch);
                    }
                });
            }
        }
    }
}

/// A client connection handed to hyper: the bytes already read come first.
struct Rewound {
    read: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
