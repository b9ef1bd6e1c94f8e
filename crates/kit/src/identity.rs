//! The gateway-to-service identity proof.
//!
//! The gateway authenticates the client (it verifies the access token), then
//! tells the backend who is calling with one header, `X-Rewards-Identity`:
//!
//! ```text
//! v2.<unix millis>.<base64url(JSON identity)>.<base64url(HMAC-SHA256)>
//! ```
//!
//! The MAC covers the version, the identity, the HTTP method, the path and
//! query the backend receives and the timestamp, in that order, keyed with a
//! secret only the gateway and the services hold. (The identity comes first
//! so that the gateway can absorb it into the MAC once per caller, see
//! [`Prepared`], and hash only the request's own part per request. Version 1
//! put it last; services still accept v1 proofs, so that they can be
//! upgraded before the gateway.) A backend accepts the identity only if the
//! MAC verifies and the timestamp is fresh, so a client that reaches a backend
//! directly cannot claim to be anyone: plain `X-User-Id`/`X-User-Roles`
//! headers mean nothing to a service, and a forged or stale proof is 401.
//! A captured header could be replayed for the same method and path within
//! the freshness window only, and only from inside the internal network.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::problem::Problem;

/// The header that carries the proof.
pub const IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-rewards-identity");

/// How old (or how far in the future) a proof may be.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(30);

const VERSION: &str = "v2";
/// The first format, still accepted (the identity was hashed last).
const VERSION_1: &str = "v1";
const MIN_SECRET_LEN: usize = 32;

/// A platform role. `Service` is held only by internal services calling each
/// other, never by a user account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Operator,
    Auditor,
    Admin,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Operator => "OPERATOR",
            Role::Auditor => "AUDITOR",
            Role::Admin => "ADMIN",
            Role::Service => "SERVICE",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "USER" => Ok(Role::User),
            "OPERATOR" => Ok(Role::Operator),
            "AUDITOR" => Ok(Role::Auditor),
            "ADMIN" => Ok(Role::Admin),
            "SERVICE" => Ok(Role::Service),
            other => Err(format!("unknown role `{other}`")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, as verified by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user's id (or the service's name).
    pub sub: String,
    pub username: String,
    pub roles: Vec<Role>,
}

impl Identity {
    /// An internal service's identity (e.g. auth reporting activities to events).
    pub fn service(name: &str) -> Self {
        Self { sub: format!("service:{name}"), username: name.to_owned(), roles: vec![Role::Service] }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// `ADMIN` may do everything; otherwise one of `allowed` is needed.
    pub fn has_any_role(&self, allowed: &[Role]) -> bool {
        self.has_role(Role::Admin) || allowed.iter().any(|r| self.has_role(*r))
    }
}

/// What the gateway vouches for on one request: who is calling (absent on
/// public routes) and the client's address (the services' throttles key on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vouched {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Identity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
}

impl From<Identity> for Vouched {
    fn from(identity: Identity) -> Self {
        Self { caller: Some(identity), client_ip: None }
    }
}

impl From<&Identity> for Vouched {
    fn from(identity: &Identity) -> Self {
        identity.clone().into()
    }
}

/// The client's address as the gateway saw it (or, without the gateway, the
/// TCP peer), in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Why a proof was refused. Logged, never sent: the client only hears 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("the proof is not of the form v1.<ts>.<identity>.<mac>")]
    Malformed,
    #[error("the proof's MAC does not verify")]
    BadSignature,
    #[error("the proof is stale or from the future")]
    Stale,
}

/// The shared secret behind the proof, held by the gateway and the services.
#[derive(Clone)]
pub struct IdentityKey {
    /// The MAC already keyed with the secret: each proof clones it instead of
    /// hashing the key again (two of the four SHA-256 blocks a proof costs).
    keyed: Hmac<Sha256>,
    max_skew: Duration,
    /// Tells the callers prepared with this secret from others'.
    id: u64,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityKey(<redacted>)")
    }
}

impl IdentityKey {
    /// A key from a configured secret, which must be at least 32 bytes long.
    pub fn from_secret(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!("the identity secret must be at least {MIN_SECRET_LEN} bytes long"));
        }
        Ok(Self::keyed_with(secret))
    }

    fn keyed_with(secret: &[u8]) -> Self {
        let keyed = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        // A fingerprint of the secret (not the secret): equal keys, equal ids.
        let fingerprint = keyed.clone().chain_update(b"identity key id").finalize().into_bytes();
        let id = u64::from_le_bytes(fingerprint[..8].try_into().expect("a SHA-256 MAC has 32 bytes"));
        Self { keyed, max_skew: DEFAULT_MAX_SKEW, id }
    }

    /// A fresh random key, as `rewards up` makes for each run.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::keyed_with(hex_lower(&bytes).as_bytes())
    }

    pub fn with_max_skew(mut self, max_skew: Duration) -> Self {
        self.max_skew = max_skew;
        self
    }

    /// What a proof's MAC starts with: the version and the payload.
    pub fn prepare(&self, payload: String) -> Prepared {
        let mut mac = self.keyed.clone();
        for part in [VERSION, &payload] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        Prepared { payload, mac, key: self.id }
    }

    /// The MAC of a version 1 proof.
    fn mac_v1(&self, method: &Method, path_and_query: &str, ts: &str, payload: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        for part in [VERSION_1, method.as_str(), path_and_query, ts, payload] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// The header value vouching for one request.
    pub fn sign(&self, method: &Method, path_and_query: &str, vouched: impl Into<Vouched>) -> HeaderValue {
        self.sign_at(method, path_and_query, vouched, SystemTime::now())
    }

    pub fn sign_at(
        &self,
        method: &Method,
        path_and_query: &str,
        vouched: impl Into<Vouched>,
        at: SystemTime,
    ) -> HeaderValue {
        self.sign_prepared_at(&self.prepare(payload_of(&vouched.into())), method, path_and_query, at)
    }

    /// [`IdentityKey::sign_at`] for a caller prepared beforehand with
    /// [`IdentityKey::prepare`], as the gateway keeps one per caller and address.
    pub fn sign_prepared_at(
        &self,
        prepared: &Prepared,
        method: &Method,
        path_and_query: &str,
        at: SystemTime,
    ) -> HeaderValue {
        debug_assert_eq!(prepared.key, self.id, "a caller prepared with another identity key");
        let mut digits = [0u8; 20];
        let ts = decimal(unix_millis(at) as u64, &mut digits);
        let mut tag = [0u8; 43];
        let tag = encode_tag(prepared.finish(method, path_and_query, ts), &mut tag);
        let payload = prepared.payload.as_bytes();
        let mut proof = Vec::with_capacity(VERSION.len() + ts.len() + payload.len() + tag.len() + 3);
        for (i, part) in [VERSION.as_bytes(), ts.as_bytes(), payload, tag].into_iter().enumerate() {
            if i > 0 {
                proof.push(b'.');
            }
            proof.extend_from_slice(part);
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(proof)).expect("base64 and digits are valid header text")
    }

    /// Checks a proof for the request it arrived with.
    pub fn verify(&self, method: &Method, path_and_query: &str, proof: &[u8]) -> Result<Vouched, ProofError> {
        self.verify_at(method, path_and_query, proof, SystemTime::now())
    }

    pub fn verify_at(
        &self,
        method: &Method,
        path_and_query: &str,
        proof: &[u8],
        now: SystemTime,
    ) -> Result<Vouched, ProofError> {
        let proof = std::str::from_utf8(proof).map_err(|_| ProofError::Malformed)?;
        let mut parts = proof.split('.');
        let (Some(version), Some(ts), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProofError::Malformed);
        };
        let mac = match version {
            VERSION => self.prepare(payload.to_owned()).absorb(method, path_and_query, ts),
            VERSION_1 => self.mac_v1(method, path_and_query, ts, payload),
            _ => return Err(ProofError::Malformed),
        };
        let tag = B64.decode(tag).map_err(|_| ProofError::Malformed)?;
        // Constant-time comparison: the MAC is checked before anything is trusted.
        mac.verify_slice(&tag).map_err(|_| ProofError::BadSignature)?;
        let ts: u128 = ts.parse().map_err(|_| ProofError::Malformed)?;
        if unix_millis(now).abs_diff(ts) > self.max_skew.as_millis() {
            return Err(ProofError::Stale);
        }
        let json = B64.decode(payload).map_err(|_| ProofError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| ProofError::Malformed)
    }
}

/// A caller's proof payload with the MAC over its first part already
/// computed: a proof for one request then hashes only the method, path and
/// time (two or three SHA-256 blocks with HMAC's outer hash, instead of
/// about five).
#[derive(Clone)]
pub struct Prepared {
    payload: String,
    mac: Hmac<Sha256>,
    /// The key it was prepared with: only that key may sign with it.
    key: u64,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared").field("payload", &self.payload).finish_non_exhaustive()
    }
}

impl Prepared {
    fn absorb(&self, method: &Method, path_and_query: &str, ts: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [method.as_str(), path_and_query, ts] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    fn finish(&self, method: &Method, path_and_query: &str, ts: &str) -> [u8; 32] {
        self.absorb(method, path_and_query, ts).finalize().into_bytes().into()
    }
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("digits are UTF-8")
}

/// A MAC in unpadded base64url, written into `buf`.
fn encode_tag(tag: [u8; 32], buf: &mut [u8; 43]) -> &[u8] {
    let written = B64.encode_slice(tag, buf).expect("32 bytes take 43 base64 characters");
    &buf[..written]
}

/// The part of a proof that says who is calling from where (base64url of its JSON).
pub fn payload_of(vouched: &Vouched) -> String {
    B64.encode(serde_json::to_vec(vouched).expect("a proof payload serialises"))
}

fn unix_millis(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Headers a client might send to pass itself off as someone: the gateway
/// removes all of them from every request before forwarding.
pub fn is_identity_header(name: &str) -> bool {
    is_identity_header_bytes(name.as_bytes())
}

/// [`is_identity_header`] for a name as the bytes that were sent.
pub fn is_identity_header_bytes(name: &[u8]) -> bool {
    let starts_with = |prefix: &[u8]| name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix);
    starts_with(b"x-user-") || starts_with(b"x-rewards-") || starts_with(b"x-internal-")
}

/// Removes every identity header a client sent.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    // Nearly every request has none: look before collecting anything.
    if !headers.keys().any(|name| is_identity_header(name.as_str())) {
        return;
    }
    let spoofed: Vec<_> = headers.keys().filter(|name| is_identity_header(name.as_str())).cloned().collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Middleware for services: verifies the proof once per request. A valid proof
/// puts the caller's [`Identity`] and [`ClientAddr`] into the request's
/// extensions; a request without one goes on anonymous (public routes) with
/// the TCP peer as its address; a present but invalid proof is 401.
pub async fn verify_identity(key: axum::extract::State<IdentityKey>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let mut client_ip = peer;
    if let Some(proof) = request.headers().get(IDENTITY_HEADER) {
        let path = request.uri().path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        match key.verify(request.method(), path, proof.as_bytes()) {
            Ok(vouched) => {
                client_ip = vouched.client_ip.or(peer);
                if let Some(identity) = vouched.caller {
                    request.extensions_mut().insert(identity);
                }
            }
            Err(why) => {
                tracing::warn!(reason = %why, "refused an identity proof");
                return Problem::unauthenticated("the caller's identity could not be verified").into_response();
            }
        }
    }
    if let Some(ip) = client_ip {
        request.extensions_mut().insert(ClientAddr(ip));
    }
    next.run(request).await
}

/// The verified caller of a protected route; absent means 401.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

impl Caller {
    /// 403 unless the caller holds one of `allowed` (or `ADMIN`).
    pub fn require(&self, allowed: &[Role]) -> Result<&Identity, Problem> {
        if self.0.has_any_role(allowed) { Ok(&self.0) } else { Err(Problem::forbidden("your roles do not allow this")) }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| Problem::unauthenticated("sign in to use this route"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> IdentityKey {
        IdentityKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn alice() -> Identity {
        Identity { sub: "u1".into(), username: "alice".into(), roles: vec![Role::User] }
    }

    #[test]
    fn a_signed_identity_verifies_for_the_same_request() {
        let proof = key().sign(&Method::GET, "/events?limit=5", alice());
        assert_eq!(key().verify(&Method::GET, "/events?limit=5", proof.as_bytes()), Ok(alice().into()));
        let anonymous = Vouched { caller: None, client_ip: Some("203.0.113.9".parse().unwrap()) };
        let proof = key().sign(&Method::POST, "/auth/login", anonymous.clone());
        assert_eq!(key().verify(&Method::POST, "/auth/login", proof.as_bytes()), Ok(anonymous));
    }

    #[test]
    fn a_proof_signed_for_a_prepared_caller_is_the_same_proof() {
        let vouched = Vouched { caller: Some(alice()), client_ip: Some("198.51.100.7".parse().unwrap()) };
        let at = SystemTime::now();
        let prepared = key().prepare(payload_of(&vouched));
        let proof = key().sign_prepared_at(&prepared, &Method::PUT, "/rewards/r1", at);
        assert_eq!(proof, key().sign_at(&Method::PUT, "/rewards/r1", vouched.clone(), at));
        assert!(proof.to_str().unwrap().starts_with("v2."), "{proof:?}");
        assert_eq!(key().verify(&Method::PUT, "/rewards/r1", proof.as_bytes()), Ok(vouched.clone()));
        assert_eq!(key().verify(&Method::GET, "/rewards/r1", proof.as_bytes()), Err(ProofError::BadSignature));
        // One prepared caller signs many requests, each its own.
        let other = key().sign_prepared_at(&prepared, &Method::GET, "/events?limit=5", at);
        assert_eq!(key().verify(&Method::GET, "/events?limit=5", other.as_bytes()), Ok(vouched));
    }

    #[test]
    fn a_version_1_proof_still_verifies() {
        let at = SystemTime::now();
        let payload = payload_of(&alice().into());
        let ts = unix_millis(at).to_string();
        let tag = B64.encode(key().mac_v1(&Method::GET, "/events", &ts, &payload).finalize().into_bytes());
        let proof = format!("v1.{ts}.{payload}.{tag}");
        assert_eq!(key().verify(&Method::GET, "/events", proof.as_bytes()), Ok(alice().into()));
        assert_eq!(key().verify(&Method::GET, "/events/1", proof.as_bytes()), Err(ProofError::BadSignature));
        // The same MAC under the other version's label does not verify.
        let relabelled = proof.replacen("v1.", "v2.", 1);
        assert_eq!(key().verify(&Method::GET, "/events", relabelled.as_bytes()), Err(ProofError::BadSignature));
    }

    #[test]
    fn timestamps_are_written_in_plain_decimal() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), "0");
        assert_eq!(decimal(1_764_633_600_123, &mut buf), "1764633600123");
        assert_eq!(decimal(u64::MAX, &mut buf), u64::MAX.to_string());
    }

    #[test]
    fn a_proof_does_not_carry_over_to_another_method_path_or_key() {
        let proof = key().sign(&Method::GET, "/events", alice());
        assert_eq!(key().verify(&Method::POST, "/events", proof.as_bytes()), Err(ProofError::BadSignature));
        assert_eq!(key().verify(&Method::GET, "/events/1", proof.as_bytes()), Err(ProofError::BadSignature));
        let other = IdentityKey::from_secret(b"another-secret-another-secret-xx").unwrap();
        assert_eq!(other.verify(&Method::GET, "/events", proof.as_bytes()), Err(ProofError::BadSignature));
    }

    #[test]
    fn a_tampered_identity_is_refused() {
        let proof = key().sign(&Method::GET, "/x", alice());
        let text = proof.to_str().unwrap();
        let parts: Vec<&str> = text.split('.').collect();
        let admin = Identity { roles: vec![Role::Admin], ..alice() };
        let forged_payload = B64.encode(serde_json::to_vec(&Vouched::from(admin)).unwrap());
        let forged = format!("{}.{}.{}.{}", parts[0], parts[1], forged_payload, parts[3]);
        assert_eq!(key().verify(&Method::GET, "/x", forged.as_bytes()), Err(ProofError::BadSignature));
    }

    #[test]
    fn stale_and_future_proofs_are_refused() {
        let now = SystemTime::now();
        let old = key().sign_at(&Method::GET, "/x", alice(), now - Duration::from_secs(31));
        assert_eq!(key().verify_at(&Method::GET, "/x", old.as_bytes(), now), Err(ProofError::Stale));
        let future = key().sign_at(&Method::GET, "/x", alice(), now + Duration::from_secs(31));
        assert_eq!(key().verify_at(&Method::GET, "/x", future.as_bytes(), now), Err(ProofError::Stale));
        let fresh = key().sign_at(&Method::GET, "/x", alice(), now - Duration::from_secs(29));
        assert!(key().verify_at(&Method::GET, "/x", fresh.as_bytes(), now).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        for junk in ["", "v1", "v2.1.2.3", "v3.1.e30.AAAA", "v1.1.2.3.4", "v1.x.y.!!!", "v2.x.y.!!!"] {
            assert_eq!(key().verify(&Method::GET, "/", junk.as_bytes()), Err(ProofError::Malformed), "{junk}");
        }
    }

    #[test]
    fn short_secrets_are_refused_and_generated_keys_differ() {
        assert!(IdentityKey::from_secret(b"short").is_err());
        let proof = IdentityKey::generate().sign(&Method::GET, "/", alice());
        assert!(IdentityKey::generate().verify(&Method::GET, "/", proof.as_bytes()).is_err());
    }

    #[test]
    fn identity_headers_are_recognised_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("X-User-Id", HeaderValue::from_static("1"));
        headers.insert("x-user-roles", HeaderValue::from_static("ADMIN"));
        headers.insert(IDENTITY_HEADER, HeaderValue::from_static("v1.forged"));
        headers.insert("x-internal-token", HeaderValue::from_static("t"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_identity_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn admin_may_do_everything() {
        let admin = Identity { roles: vec![Role::Admin], ..alice() };
        assert!(admin.has_any_role(&[Role::Operator]));
        assert!(!alice().has_any_role(&[Role::Operator, Role::Auditor]));
    }
}
