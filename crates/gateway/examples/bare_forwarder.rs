//! A reference for the gateway benchmark (`bench/gateway.sh`): hyper
//! forwarding and nothing else, served the way the gateway serves (one
//! single-threaded runtime per core, `SO_REUSEPORT`, a pool of upstream
//! connections per thread). No token check, no rules, no identity proof, no
//! request id, no metrics, no timeouts: the difference between it and the
//! gateway is what the gateway's duties cost.
//!
//! Usage: `bare_forwarder LISTEN UPSTREAM PREFIX`, e.g.
//! `bare_forwarder 127.0.0.1:18093 127.0.0.1:18080 /bench`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

async fn connection(upstream: SocketAddr) -> anyhow::Result<SendRequest<Incoming>> {
    if let Some(sender) = IDLE.with_borrow_mut(|idle| {
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }) {
        return Ok(sender);
    }
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(connection);
    Ok(sender)
}

async fn forward(upstream: SocketAddr, prefix: &str, request: Request<Incoming>) -> anyhow::Result<Response<Incoming>> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.strip_prefix(prefix).unwrap_or(path).parse()?;
    let mut sender = connection(upstream).await?;
    let response = sender.send_request(Request::from_parts(parts, body)).await?;
    // Back to the pool at once: a body still streaming leaves it not ready,
    // and `connection` skips it (good enough for small answers).
    IDLE.with_borrow_mut(|idle| idle.push(sender));
    Ok(response)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, prefix) = match &args[1..] {
        [listen, upstream, prefix] => (listen.parse()?, upstream.parse()?, prefix.clone()),
        _ => anyhow::bail!("usage: bare_forwarder LISTEN UPSTREAM PREFIX"),
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let listeners = rewards_kit::server::bind_reuseport("bare_forwarder", listen, threads)?;
    let serving: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let prefix = prefix.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
                tokio::task::LocalSet::new().block_on(&runtime, async move {
                    let listener = TcpListener::from_std(listener)?;
                    let prefix: &'static str = Box::leak(prefix.into_boxed_str());
                    loop {
                        let (stream, _) = listener.accept().await?;
                        stream.set_nodelay(true)?;
                        let service = hyper::service::service_fn(move |request| async move {
                            Ok::<_, Infallible>(match forward(upstream, prefix, request).await {
                                Ok(response) => response.map(http_body_util::Either::Left),
                                Err(_) => Response::builder()
                                    .status(502)
                                    .body(http_body_util::Either::Right(http_body_util::Empty::new()))
                                    .expect("a plain 502"),
                            })
                        });
                        let connection =
                            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                        tokio::task::spawn_local(connection);
                    }
                })
            })
        })
        .collect();
    for thread in serving {
        thread.join().map_err(|_| anyhow::anyhow!("a serving thread panicked"))??;
    }
    Ok(())
}
