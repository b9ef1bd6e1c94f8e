//! HTTP/1.1 on the wire, for the requests the gateway serves with its own
//! code ([`crate::plain`]): which request heads it takes, the upstream
//! request it writes from one, how the upstream's answer is framed, where a
//! chunked body ends, and the head the client gets.
//!
//! Heads are parsed in place by `httparse`; nothing here allocates except to
//! grow the output buffer.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

/// The most headers a head may have and still be served here.
pub const MAX_HEADERS: usize = 64;

/// What the gateway needs from a request head it serves itself, found in
/// one pass over its headers.
#[derive(Debug)]
pub struct Plain<'b> {
    pub method: Method,
    pub path: &'b str,
    pub query: Option<&'b str>,
    pub authorization: Option<&'b [u8]>,
    pub request_id: Option<&'b [u8]>,
    pub host: Option<&'b [u8]>,
    /// The body's `Content-Length` (0: no body).
    pub body_length: u64,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

impl Plain<'_> {
    /// Retried on a new connection when a kept-alive one turns out closed
    /// (RFC 9110 §9.2.2: safe to repeat, and no body that was read and sent).
    pub fn is_repeatable(&self) -> bool {
        self.body_length == 0 && matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// The request as the gateway's own code serves it, or `None` when hyper
/// should: HTTP/1.0, a body not framed by one `Content-Length` (a transfer
/// coding), `Expect`, `Upgrade`, `Connection` options other than
/// keep-alive/close, a request target not in origin form, or a duplicated
/// `Host` or `Authorization`.
pub fn classify<'b>(request: &httparse::Request<'_, 'b>) -> Option<Plain<'b>> {
    if request.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(request.method?.as_bytes()).ok()?;
    let target = request.path?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let valid = path.starts_with('/')
        && path.bytes().all(is_path_byte)
        && query.is_none_or(|query| query.bytes().all(is_query_byte));
    if !valid {
        return None;
    }
    let mut plain =
        Plain { method, path, query, authorization: None, request_id: None, host: None, body_length: 0, close: false };
    let mut length = None;
    for header in request.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let declared = parse_length(value)?;
            if length.replace(declared).is_some_and(|l| l != declared) {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            if plain.authorization.replace(value).is_some() {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            if plain.host.replace(value).is_some() {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            // The first one counts; every one is replaced (see `write_upstream_head`).
            plain.request_id.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            match value.trim_ascii() {
                v if v.eq_ignore_ascii_case(b"keep-alive") => {}
                v if v.eq_ignore_ascii_case(b"close") => plain.close = true,
                _ => return None,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return None;
        }
    }
    plain.body_length = length.unwrap_or(0);
    Some(plain)
}

/// The bytes a path may hold as sent (RFC 3986 `pchar` and `/`, plus `"`,
/// `{`, `}`, `|`, `\\`, `^`, `[`, `]`, which clients send unencoded): what the
/// hyper path accepts too. No space, `#`, `<`, `>`, `` ` ``, control or
/// non-ASCII byte.
fn is_path_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x22 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7E)
}

/// The bytes a query may hold as sent: as a path, and `?` and `` ` ``, but not `"`.
fn is_query_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E)
}

/// Headers that describe one hop (RFC 9110 §7.6.1), never relayed (the
/// hyper path asks here too).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    [&b"connection"[..], b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"upgrade"]
        .iter()
        .any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Request headers the gateway sets itself, or that must not reach a
/// backend: the client's versions are dropped.
fn is_replaced_request_header(name: &[u8]) -> bool {
    is_hop_by_hop(name)
        || rewards_kit::identity::is_identity_header_bytes(name)
        || [
            &b"host"[..],
            b"authorization",
            b"content-length",
            b"x-request-id",
            b"x-forwarded-for",
            b"x-forwarded-host",
            b"x-forwarded-proto",
            b"forwarded",
            b"x-real-ip",
        ]
        .iter()
        .any(|own| name.eq_ignore_ascii_case(own))
}

/// The upstream request's head: the client's request line with the
/// backend's path, the instance's `Host`, the client's headers without the
/// ones the gateway replaces, then the gateway's own (`extra`).
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    plain: &Plain<'_>,
    backend_path: &str,
    host: &[u8],
    headers: &[httparse::Header<'_>],
    extra: &[(&[u8], &[u8])],
) {
    out.extend_from_slice(plain.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(backend_path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    for header in headers.iter().filter(|h| !is_replaced_request_header(h.name.as_bytes())) {
        write_header(out, header.name.as_bytes(), header.value);
    }
    // One length, as the gateway read it (a client's `05` or repeated
    // header is not passed on for the backend to read its own way).
    if plain.body_length > 0 {
        write_number_header(out, b"content-length", plain.body_length);
    }
    if let Some(host) = plain.host {
        write_header(out, b"x-forwarded-host", host);
    }
    for (name, value) in extra {
        write_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A header whose value is a number, written without a string in between.
pub fn write_number_header(out: &mut Vec<u8>, name: &[u8], value: u64) {
    use std::io::Write as _;
    out.extend_from_slice(name);
    // Writing into a Vec cannot fail.
    let _ = write!(out, ": {value}\r\n");
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: an answer to HEAD, a 204 or a 304.
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// An upstream response head, as far as relaying it goes.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub framing: Framing,
    /// The upstream connection can carry another request after this body.
    pub reusable: bool,
    /// Framed by a transfer coding although it has a length too: the length
    /// is not relayed, and the client connection is closed after it.
    pub ambiguous: bool,
}

/// An upstream answer the gateway cannot relay.
#[derive(Debug, thiserror::Error)]
pub enum BadAnswer {
    #[error("an invalid response head: {0}")]
    Head(#[from] httparse::Error),
    #[error("a status line with status {0}")]
    Status(u16),
    #[error("conflicting or invalid Content-Length")]
    Length,
    #[error("a response head larger than the gateway reads")]
    TooLarge,
}

/// What a response head says, or `None` for an interim (1xx) answer that
/// is skipped.
pub fn answer_of(response: &httparse::Response<'_, '_>, to_head: bool) -> Result<Option<Answer>, BadAnswer> {
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| BadAnswer::Status(code))?;
    if status.is_informational() {
        // The gateway never asks to switch protocols.
        return if code == 101 { Err(BadAnswer::Status(code)) } else { Ok(None) };
    }
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = response.version != Some(1);
    for header in response.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_length(value).ok_or(BadAnswer::Length)?;
            if length.is_some_and(|l| l != parsed) {
                return Err(BadAnswer::Length);
            }
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding listed decides; only chunked ends on its own.
            let last = value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") && has_token(value, b"close") {
            close = true;
        }
    }
    let framing = if to_head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::UntilClose,
        }
    };
    // A length next to a transfer coding is a smuggling attempt's shape:
    // relayed by the coding, and the connection not used again.
    let ambiguous = chunked.is_some() && length.is_some();
    let reusable = !close && !ambiguous && framing != Framing::UntilClose;
    Ok(Some(Answer { status, framing, reusable, ambiguous }))
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The head the client gets for an upstream answer: its status, its headers
/// without hop-by-hop ones (and those its `Connection` names) and without
/// its `X-Request-Id`, then the request's id, a `Date` when it had none,
/// and `Connection: close` when the client connection ends after it.
pub fn write_client_head(
    out: &mut Vec<u8>,
    response: &httparse::Response<'_, '_>,
    answer: &Answer,
    request_id: &[u8],
    close: bool,
) {
    let status = answer.status;
    write_status_line(out, status, response.reason);
    let connection_names = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .unwrap_or_default();
    let mut dated = false;
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        let dropped = is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"x-request-id")
            || has_token(connection_names, name)
            || (answer.ambiguous && name.eq_ignore_ascii_case(b"content-length"));
        if dropped {
            continue;
        }
        dated |= name.eq_ignore_ascii_case(b"date");
        write_header(out, name, header.value);
    }
    if !dated {
        write_date(out);
    }
    finish_client_head(out, request_id, close);
}

/// The status line; the standard reason phrase when there is one.
pub fn write_status_line(out: &mut Vec<u8>, status: StatusCode, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    let reason = status.canonical_reason().or(reason).unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The request id, `Connection: close` when the connection ends, and the
/// blank line.
pub fn finish_client_head(out: &mut Vec<u8>, request_id: &[u8], close: bool) {
    write_header(out, b"x-request-id", request_id);
    if close {
        write_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// `Date`, formatted once a second per thread.
pub fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        write_header(out, b"date", text.as_bytes());
    });
}

/// Follows a chunked body (RFC 9112 §7.1) as its bytes go by, to know where
/// it ends; the bytes themselves are relayed as they are.
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// In a chunk-size line's digits (`value` so far, `digits` of them).
    #[default]
    SizeStart,
    Size {
        value: u64,
        digits: u8,
    },
    /// Blanks after a chunk size.
    SizeBws {
        value: u64,
    },
    /// In a chunk extension, up to the line's end.
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that breaks the grammar.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a malformed chunked body")]
pub struct BadChunk;

impl Chunks {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes in the next bytes of the body; returns how many of them belong
    /// to it (fewer than given only when the body ended among them).
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        use ChunkState::*;
        let mut at = 0;
        while at < bytes.len() && self.state != Done {
            if let Data { left } = self.state {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                self.state = if take == left { DataCr } else { Data { left: left - take } };
                continue;
            }
            let byte = bytes[at];
            at += 1;
            self.state = match (self.state, byte) {
                (SizeStart, b) => match hex_digit(b) {
                    Some(d) => Size { value: d, digits: 1 },
                    None => return Err(BadChunk),
                },
                (Size { value, digits }, b) => match hex_digit(b) {
                    // 15 hex digits: more than any body anyone sends.
                    Some(d) if digits < 15 => Size { value: (value << 4) | d, digits: digits + 1 },
                    Some(_) => return Err(BadChunk),
                    None if b == b'\r' => SizeLf { value },
                    None if b == b';' => Extension { value },
                    None if b == b' ' || b == b'\t' => SizeBws { value },
                    None => return Err(BadChunk),
                },
                // Blanks after the size may only lead to an extension or the line's end.
                (SizeBws { value }, b' ' | b'\t') => SizeBws { value },
                (SizeBws { value }, b';') => Extension { value },
                (SizeBws { value }, b'\r') => SizeLf { value },
                (Extension { value }, b'\r') => SizeLf { value },
                (Extension { .. }, b'\n') => return Err(BadChunk),
                (Extension { value }, _) => Extension { value },
                (SizeLf { value: 0 }, b'\n') => TrailerStart,
                (SizeLf { value }, b'\n') => Data { left: value },
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, b'\n') => return Err(BadChunk),
                (Trailer, b'\r') => TrailerLf,
                (Trailer, b'\n') => return Err(BadChunk),
                (TrailerStart | Trailer, _) => Trailer,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(BadChunk),
            };
        }
        Ok(at)
    }
}

fn hex_digit(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_request(raw: &[u8]) -> Option<(Method, String, u64, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(raw).unwrap().is_complete());
        classify(&request).map(|p| (p.method, p.path.to_owned(), p.body_length, p.close))
    }

    #[test]
    fn only_http11_requests_in_origin_form_with_a_length_or_no_body_are_plain() {
        let plain = parse_request(b"GET /a/b?x=1 HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(plain, Some((Method::GET, "/a/b".to_owned(), 0, false)));
        let closing = parse_request(b"DELETE /a HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert_eq!(closing, Some((Method::DELETE, "/a".to_owned(), 0, true)));
        let posting = parse_request(b"POST /a HTTP/1.1\r\nContent-Length: 12\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(posting, Some((Method::POST, "/a".to_owned(), 12, false)));
        for other in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: keep-alive, x-private\r\n\r\n",
            b"GET http://g/a HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET /a<b> HTTP/1.1\r\n\r\n",
            b"GET /a`b HTTP/1.1\r\n\r\n",
            b"GET /a?q=\"x\" HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: one\r\nHost: two\r\n\r\n",
            b"GET /a HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
        ] {
            assert_eq!(parse_request(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn the_upstream_head_carries_the_clients_headers_without_the_replaced_ones() {
        let raw =
            b"POST /svc/a?q=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nX-User-Id: 1\r\nX-Request-Id: r\r\n\
                    x-forwarded-for: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nTE: trailers\r\nContent-Length: 05\r\ncontent-length: 5\r\nAccept: */*\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(raw).unwrap();
        let plain = classify(&request).unwrap();
        let mut out = Vec::new();
        write_upstream_head(&mut out, &plain, "/a?q=1", b"backend:1", request.headers, &[(b"x-request-id", b"id")]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?q=1 HTTP/1.1\r\nhost: backend:1\r\nAccept: */*\r\ncontent-length: 5\r\nx-forwarded-host: gw\r\n\
             x-request-id: id\r\n\r\n"
        );
    }

    fn answer(raw: &[u8], to_head: bool) -> Result<Option<Answer>, BadAnswer> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        assert!(response.parse(raw).unwrap().is_complete());
        answer_of(&response, to_head)
    }

    #[test]
    fn a_response_is_framed_by_its_coding_its_length_or_the_connection() {
        let framing = |raw: &[u8]| answer(raw, false).unwrap().map(|a| (a.framing, a.reusable));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), Some((Framing::Length(5), true)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some((Framing::Chunked, true))
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), Some((Framing::UntilClose, false)));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), Some((Framing::UntilClose, false)));
        assert_eq!(framing(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"), Some((Framing::Length(1), false)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"),
            Some((Framing::Length(1), false))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some((Framing::Chunked, false))
        );
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n"), Some((Framing::Empty, true)));
        assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), Some((Framing::Empty, true)));
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap().unwrap().framing,
            Framing::Empty
        );
        assert_eq!(framing(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"), None);
        assert!(answer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        assert!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
    }

    #[test]
    fn the_client_head_drops_hop_by_hop_headers_and_the_upstreams_request_id() {
        let raw =
            b"HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
                    X-Request-Id: other\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Kept: yes\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        response.parse(raw).unwrap();
        let mut out = Vec::new();
        let answer = answer_of(&response, false).unwrap().unwrap();
        write_client_head(&mut out, &response, &answer, b"id-1", true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Kept: yes\r\n\
             x-request-id: id-1\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_however_it_is_split() {
        let body = b"5;ext=1\r\nhello\r\n10 ; ext\r\n0123456789abcdef\r\n0\r\nTrailer-A: 1\r\n\r\n";
        let mut whole = body.to_vec();
        whole.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut chunks = Chunks::default();
        assert_eq!(chunks.advance(&whole), Ok(body.len()));
        assert!(chunks.is_done());
        // A byte at a time.
        let mut chunks = Chunks::default();
        for (i, byte) in body.iter().enumerate() {
            assert!(!chunks.is_done(), "done early at {i}");
            assert_eq!(chunks.advance(std::slice::from_ref(byte)), Ok(1));
        }
        assert!(chunks.is_done());
        let mut plain_end = Chunks::default();
        assert_eq!(plain_end.advance(b"0\r\n\r\n"), Ok(5));
        assert!(plain_end.is_done());
    }

    #[test]
    fn a_malformed_chunked_body_is_refused() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloX", b"\r\n", b"5\n", b"0\r\n\n", b"1234567890abcdef0\r\n", b"5 junk\r\n"]
        {
            assert_eq!(Chunks::default().advance(bad), Err(BadChunk), "{}", String::from_utf8_lossy(bad));
        }
    }
}
