//! The gateway's own HTTP/1 code, seen from raw clients and raw backends:
//! pipelining, bodies, the hand-over to hyper, every way an answer can be framed,
//! hop-by-hop headers, and backends that close kept-alive connections.

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// What a raw backend does with a request.
enum Act {
    Answer(Vec<u8>),
    /// Answers, then closes the connection without saying so.
    AnswerThenClose(Vec<u8>),
    /// Reads the request and closes the connection without answering.
    CloseUnanswered,
    /// Answers with a head saying `Content-Length: len`, then sends zeros
    /// until they are all sent or nobody takes them.
    Stream {
        len: usize,
    },
}

/// One request a raw backend received: its connection, method and path.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    connection: usize,
    method: String,
    path: String,
}

/// A backend written on TCP directly, answering `/health` and `/ready` with
/// 200 and every other request as `script(method, path, nth request on its
/// connection)` says.
struct RawBackend {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawBackend {
    async fn start(script: fn(&str, &str, usize) -> Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((stream, _)) = listener.accept().await {
                connection += 1;
                tokio::spawn(serve_raw(stream, connection, script, log.clone()));
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_raw(
    mut stream: TcpStream,
    connection: usize,
    script: fn(&str, &str, usize) -> Act,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buffer = Vec::new();
    let mut nth = 0;
    loop {
        let Some(head) = read_head(&mut stream, &mut buffer).await else { return };
        let mut line = head.split(' ');
        let (method, path) = (line.next().unwrap_or("").to_owned(), line.next().unwrap_or("").to_owned());
        if path == "/health" || path == "/ready" {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 33\r\n\r\n{\"status\":\"ready\",\"checks\":{}}   ";
            if stream.write_all(answer).await.is_err() {
                return;
            }
            continue;
        }
        nth += 1;
        log.lock().unwrap().push(Seen { connection, method: method.clone(), path: path.clone() });
        match script(&method, &path, nth) {
            Act::Answer(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Act::AnswerThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Act::CloseUnanswered => return,
            Act::Stream { len } => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let zeros = vec![0u8; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len());
                    if stream.write_all(&zeros[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            }
        }
    }
}

/// The next request head on a connection (bodiless requests only).
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One answer with a `Content-Length` from a raw connection: its head (lower
/// case) and its body.
async fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> (String, Vec<u8>) {
    let head = read_head(stream, buffer).await.expect("an answer").to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buffer.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the middle of a body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    (head, buffer.drain(..length).collect())
}

/// The `raw` service, public GET and POST routes, on `backend`.
fn raw_spec(backend: &RawBackend) -> Value {
    json!({
        "name": "raw",
        "prefix": "/raw",
        "instances": [backend.url],
        "routes": [
            { "method": "GET", "path": "/{what}", "public": true },
            { "method": "POST", "path": "/{what}", "public": true },
        ]
    })
}

/// Registers the `raw` service on `backend`; returns a client of its own to
/// call it with (the gateway's test client sent bodies while registering, so
/// its connection is served by hyper).
async fn register_raw(gw: &TestGateway, backend: &RawBackend) -> reqwest::Client {
    let admin = gw.login("admin", ADMIN_PASSWORD).await;
    let spec = raw_spec(backend);
    let response = gw.call(Method::POST, "/gateway/services", Some(&admin)).json(&spec).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    reqwest::Client::new()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_bodies_with_a_length_stream_and_others_go_to_hyper() {
    let gw = TestGateway::start().await;
    let mut stream = TcpStream::connect(gw.gateway.addr()).await.unwrap();
    let mut buffer = Vec::new();
    stream
        .write_all(
            b"GET /echo/public HTTP/1.1\r\nhost: gw\r\nx-request-id: first\r\n\r\n\
              GET /echo/items/1 HTTP/1.1\r\nhost: gw\r\nx-request-id: second\r\n\r\n\
              GET /echo/public?page=2 HTTP/1.1\r\nhost: gw\r\nx-request-id: third\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-request-id: first"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["requestIds"], json!(["first"]));
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 401"), "no token for a protected route: {head}");
    assert!(head.contains("x-request-id: second") && head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["code"], "UNAUTHENTICATED");
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.contains("x-request-id: third"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["uri"], "/public?page=2");

    // A body with a length is streamed to the backend; one refused at the
    // gateway (no token for a protected route) is read and dropped, and the
    // connection goes on with the next request.
    stream
        .write_all(
            b"POST /echo/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n\r\nhello\
                     POST /echo/items HTTP/1.1\r\nhost: gw\r\ncontent-length: 7\r\n\r\n{\"a\":1}\
                     GET /echo/public HTTP/1.1\r\nhost: gw\r\nx-request-id: after-bodies\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["bodyLength"], 5);
    let (head, _) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.contains("x-request-id: after-bodies"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["method"], "GET");
    // A body whose head comes first and the rest later arrives whole.
    stream.write_all(b"POST /echo/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 20000\r\n\r\n").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stream.write_all(&[b'x'; 20000]).await.unwrap();
    let (_, body) = read_answer(&mut stream, &mut buffer).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["bodyLength"], 20000);

    // A chunked upload goes to hyper with the connection, which goes on
    // serving there.
    stream
        .write_all(
            b"POST /echo/upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                     GET /echo/public HTTP/1.1\r\nhost: gw\r\nx-request-id: after\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["bodyLength"], 3);
    let (head, body) = read_answer(&mut stream, &mut buffer).await;
    assert!(head.contains("x-request-id: after"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["method"], "GET");

    // A client that asks to close gets its answer, then the connection closes.
    let mut closing = TcpStream::connect(gw.gateway.addr()).await.unwrap();
    closing.write_all(b"GET /echo/public HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut everything = Vec::new();
    closing.read_to_end(&mut everything).await.unwrap();
    let everything = String::from_utf8_lossy(&everything).to_ascii_lowercase();
    assert!(everything.starts_with("http/1.1 200") && everything.contains("connection: close"), "{everything}");
}

fn framing_script(_method: &str, path: &str, _nth: usize) -> Act {
    let bytes = |text: &str| text.as_bytes().to_vec();
    match path {
        "/early" => Act::Answer(bytes(
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        )),
        "/chunked" => Act::Answer(bytes(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;note=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        )),
        "/hop" => Act::Answer(bytes(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n\
             x-request-id: made-by-the-backend\r\nx-kept: yes\r\n\r\nok",
        )),
        "/until-close" => Act::AnswerThenClose(bytes("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of this")),
        "/garbage" => Act::Answer(bytes("SPEAKING SOMETHING ELSE\r\n\r\n")),
        "/big-head" => Act::Answer(bytes(&format!(
            "HTTP/1.1 200 OK\r\n{}x-big: {}\r\ncontent-length: 3\r\n\r\nbig",
            "set-cookie: a=1\r\n".repeat(80),
            "b".repeat(40_000)
        ))),
        "/huge-head" => Act::Answer(bytes(&format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "b".repeat(300_000)))),
        "/bad-chunk" => Act::Answer(bytes("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")),
        "/both-lengths" => Act::Answer(bytes(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )),
        _ => Act::Answer(bytes("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")),
    }
}

#[tokio::test]
async fn answers_are_relayed_however_they_are_framed_without_hop_by_hop_headers() {
    let gw = TestGateway::start().await;
    let backend = RawBackend::start(framing_script).await;
    let client = register_raw(&gw, &backend).await;
    let get = |path: &str| client.get(gw.gateway.url(&format!("/raw{path}"))).header("x-request-id", "mine").send();

    let early = get("/early").await.unwrap();
    assert_eq!(early.status(), StatusCode::OK, "the interim answer is skipped");
    assert_eq!(early.text().await.unwrap(), "hello");
    let chunked = get("/chunked").await.unwrap();
    assert_eq!(chunked.text().await.unwrap(), "hello world");
    let hop = get("/hop").await.unwrap();
    assert_eq!(hop.headers()["x-kept"], "yes");
    assert_eq!(hop.headers()["x-request-id"], "mine", "the request's id, not the backend's");
    assert!(
        hop.headers().get("x-secret").is_none() && hop.headers().get("keep-alive").is_none(),
        "{:?}",
        hop.headers()
    );
    assert!(hop.headers().get("date").is_some());
    assert_eq!(hop.text().await.unwrap(), "ok");
    // The three went over one upstream connection, each given back whole.
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.connection == seen[0].connection), "{seen:?}");

    let until_close = get("/until-close").await.unwrap();
    assert_eq!(until_close.status(), StatusCode::OK);
    assert_eq!(until_close.text().await.unwrap(), "all of this");
    problem(get("/garbage").await.unwrap(), StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
    problem(get("/huge-head").await.unwrap(), StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
    problem(get("/bad-chunk").await.unwrap(), StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
    // Many cookies and a large header are relayed (as through hyper).
    let big_head = get("/big-head").await.unwrap();
    assert_eq!(big_head.headers().get_all("set-cookie").iter().count(), 80);
    assert_eq!(big_head.text().await.unwrap(), "big");
    // A length next to a transfer coding: the coding frames it, the length
    // is not passed on, and that client connection is not used again.
    let mut raw = TcpStream::connect(gw.gateway.addr()).await.unwrap();
    raw.write_all(b"GET /raw/both-lengths HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
    let mut everything = Vec::new();
    raw.read_to_end(&mut everything).await.unwrap();
    let everything = String::from_utf8_lossy(&everything).to_ascii_lowercase();
    assert!(!everything.contains("content-length") && everything.contains("connection: close"), "{everything}");
    assert!(everything.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{everything}");
    // And the gateway still answers on new connections to the backend.
    assert_eq!(get("/early").await.unwrap().text().await.unwrap(), "hello");

    // On a connection handed to hyper (by a chunked upload) too, an answer
    // that ends with trailers gives its upstream connection back whole.
    let before = backend.seen().len();
    let mut raw = TcpStream::connect(gw.gateway.addr()).await.unwrap();
    raw.write_all(
        b"POST /echo/upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n\
          GET /raw/chunked HTTP/1.1\r\nhost: gw\r\n\r\n\
          GET /raw/hop HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut everything = Vec::new();
    raw.read_to_end(&mut everything).await.unwrap();
    let everything = String::from_utf8_lossy(&everything);
    assert_eq!(everything.matches("HTTP/1.1 200").count(), 3, "{everything}");
    let seen = &backend.seen()[before..];
    assert_eq!(seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/chunked", "/hop"]);
    assert_eq!(seen[0].connection, seen[1].connection, "{seen:?}");
}

fn closes_after_one(_method: &str, _path: &str, nth: usize) -> Act {
    if nth == 1 {
        Act::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
    } else {
        Act::CloseUnanswered
    }
}

fn closes_silently(_method: &str, _path: &str, _nth: usize) -> Act {
    Act::AnswerThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
}

#[tokio::test]
async fn a_kept_alive_upstream_connection_that_closes_is_retried_for_a_get_but_a_post_is_never_sent_twice() {
    let gw = TestGateway::start().await;
    let backend = RawBackend::start(closes_after_one).await;
    let client = register_raw(&gw, &backend).await;
    let call = |method: Method| client.request(method, gw.gateway.url("/raw/x")).send();

    assert_eq!(call(Method::GET).await.unwrap().status(), StatusCode::OK);
    // The pooled connection takes the next GET and closes: sent again on a
    // new connection.
    assert_eq!(call(Method::GET).await.unwrap().status(), StatusCode::OK);
    // A POST on a connection that closes may have done something: 502, not
    // sent again.
    problem(call(Method::POST).await.unwrap(), StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
    let posts = backend.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 1, "{:?}", backend.seen());
    let connections: std::collections::HashSet<usize> = backend.seen().iter().map(|s| s.connection).collect();
    assert_eq!(connections.len(), 2, "{:?}", backend.seen());

    // A backend that closes each connection after answering, without
    // saying so: the gateway sees the closed connection before using it.
    let silent = RawBackend::start(closes_silently).await;
    let admin = gw.login("admin", ADMIN_PASSWORD).await;
    let replaced =
        gw.call(Method::POST, "/gateway/services", Some(&admin)).json(&raw_spec(&silent)).send().await.unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    for method in [Method::GET, Method::POST, Method::POST, Method::GET, Method::POST] {
        let response = call(method.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
    }
    assert_eq!(silent.seen().len(), 5);
}

fn streams_a_lot(_method: &str, _path: &str, _nth: usize) -> Act {
    Act::Stream { len: 1 << 30 }
}

#[tokio::test]
async fn a_client_that_leaves_an_answer_unread_is_cut_off_after_the_send_timeout() {
    use std::time::{Duration, Instant};
    let gw = TestGateway::start_with(|s| s.header_timeout_ms = 300).await;
    let backend = RawBackend::start(streams_a_lot).await;
    register_raw(&gw, &backend).await;
    // A small receive window, so that the answer cannot all sit in buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut reader = socket.connect(gw.gateway.addr().parse().unwrap()).await.unwrap();
    reader.write_all(b"GET /raw/a-gigabyte HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
    // Reads nothing for a while: the gateway gives up on the answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut received = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection stayed open after the send timeout ({received} bytes read)"),
        }
    }
    assert!(received < 256 << 20, "{received} bytes arrived: nothing was cut off");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn many_requests_at_once_each_get_their_own_answer() {
    let gw = TestGateway::start().await;
    // Separate clients, so that the requests come over many connections to
    // both serving threads and share pooled upstream connections.
    let clients: Vec<reqwest::Client> = (0..8).map(|_| reqwest::Client::new()).collect();
    let n = 240;
    let results = rewards_kit::testing::all_at_once(n, |i| {
        let client = &clients[i % clients.len()];
        let id = format!("req-{i}");
        match i % 3 {
            0 => client.get(gw.gateway.url(&format!("/echo/public?i={i}"))).header("x-request-id", id),
            // Bodies of different lengths, some past one read's worth.
            _ => client.post(gw.gateway.url("/echo/upload")).header("x-request-id", id).body(vec![b'b'; i * 97]),
        }
    })
    .await;
    for (i, (status, seen)) in results.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "request {i}: {seen}");
        assert_eq!(seen["requestIds"], json!([format!("req-{i}")]), "request {i} got another's answer");
        match i % 3 {
            0 => assert_eq!(seen["uri"], format!("/public?i={i}")),
            _ => assert_eq!(seen["bodyLength"], i * 97),
        }
    }
    assert_eq!(gw.echo.hits(), n);
}
