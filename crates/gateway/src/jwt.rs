//! Access-token verification against the auth service's JWKS.
//!
//! Only EdDSA is accepted (an algorithm allow-list per key: every published
//! key is Ed25519); `exp`, `nbf`, `iss` and `aud` are checked. Keys are
//! fetched at start, refetched when a token names an unknown `kid` (at most
//! once per [`REFETCH_GAP`], so garbage `kid`s cannot make us hammer the auth
//! service), and refreshed periodically. A verified token is remembered until
//! it expires, so a client's many requests cost one signature check: in a
//! cache shared by the serving threads, and in front of it one per thread
//! (a lookup there touches nothing another core writes).
//!
//! Revocation does not wait for expiry: every token carries its user's token
//! version (`tv`), and the verifier knows, from the auth service's feed (see
//! `revocations.rs`), the version each revoked user's tokens must have now.
//! Whichever cache answers, a token below its user's version is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rewards_kit::Problem;
use rewards_kit::identity::{Identity, IdentityKey, Prepared, Role, Vouched, payload_of};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::FastMap;
use crate::upstream::Client;

/// The shortest time between two JWKS fetches triggered by unknown `kid`s.
const REFETCH_GAP: Duration = Duration::from_secs(5);
const SHARDS: usize = 16;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    username: String,
    roles: Vec<Role>,
    exp: i64,
    /// The user's token version when it was issued (0 for tokens from
    /// before versions).
    #[serde(default)]
    tv: i64,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    alg: Option<String>,
}

/// What the auth service's revocation feed said.
#[derive(Debug, Clone, Default)]
struct Revoked {
    /// Revoked users: the token version their tokens must have now.
    users: HashMap<String, i64>,
    /// Revoked signing keys.
    keys: std::collections::HashSet<Arc<str>>,
}

/// A verified token's identity, remembered until the token expires: the
/// identity, `exp`, `tv`, and the `kid` of the key that signed it.
type Entry = (Arc<Identity>, i64, i64, Arc<str>);

/// A verified token as one serving thread remembers it.
pub struct Verified {
    pub identity: Arc<Identity>,
    exp: i64,
    tv: i64,
    kid: Arc<str>,
    verifier: u64,
    /// The identity proof prepared for the address this token last came from.
    prepared: RefCell<Option<(IpAddr, Rc<Prepared>)>>,
}

impl Verified {
    /// The identity proof, prepared with `key`, vouching for this caller at `ip`.
    pub fn prepared_for(&self, ip: IpAddr, key: &IdentityKey) -> Rc<Prepared> {
        let mut cached = self.prepared.borrow_mut();
        match &*cached {
            Some((at, prepared)) if *at == ip => prepared.clone(),
            _ => {
                let vouched = Vouched { caller: Some((*self.identity).clone()), client_ip: Some(ip) };
                let prepared = Rc::new(key.prepare(payload_of(&vouched)));
                *cached = Some((ip, prepared.clone()));
                prepared
            }
        }
    }
}

/// The `Authorization` header a connection last sent, with the token it
/// proved: a client sends the same header with every request of a
/// keep-alive connection, and comparing it costs less than finding the token
/// in the thread's cache.
#[derive(Default)]
pub struct LastToken(RefCell<Option<Remembered>>);

/// An `Authorization` header's bytes and the token it proved.
type Remembered = (Box<[u8]>, Rc<Verified>);

impl LastToken {
    fn get(&self, authorization: &[u8], verifier: u64, now: i64) -> Option<Rc<Verified>> {
        let last = self.0.borrow();
        let (header, verified) = last.as_ref()?;
        let same = **header == *authorization && verified.verifier == verifier && verified.exp > now;
        same.then(|| verified.clone())
    }

    fn set(&self, authorization: &[u8], verified: Rc<Verified>) {
        // A copy: the header's bytes live in the connection's read buffer.
        *self.0.borrow_mut() = Some((authorization.into(), verified));
    }
}

thread_local! {
    static VERIFIED: RefCell<FastMap<Box<str>, Rc<Verified>>> = RefCell::new(FastMap::default());
}

pub struct Verifier {
    /// Tells this verifier's entries in the per-thread caches from another's.
    id: u64,
    jwks_url: Uri,
    client: Client,
    keys: ArcSwap<HashMap<String, DecodingKey>>,
    /// What the revocation feed said: one load per request.
    revoked: ArcSwap<Revoked>,
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
    cache: Vec<RwLock<FastMap<Box<str>, Entry>>>,
    per_shard: usize,
    per_thread: usize,
    hasher: foldhash::fast::RandomState,
}

impl Verifier {
    pub fn new(jwks_url: Uri, client: Client, issuer: &str, audience: &str, cache_size: usize) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            jwks_url,
            client,
            keys: ArcSwap::from_pointee(HashMap::new()),
            revoked: ArcSwap::from_pointee(Revoked::default()),
            last_fetch: Mutex::new(None),
            validation,
            cache: (0..SHARDS).map(|_| RwLock::new(FastMap::default())).collect(),
            per_shard: (cache_size / SHARDS).max(1),
            per_thread: cache_size.max(1),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The caller an `Authorization` header proves: none when it is not a
    /// bearer token, 401 when the token does not verify. What the connection
    /// sent last time, or this thread's cache, answers when they can.
    pub async fn verify_header(
        &self,
        last: &LastToken,
        authorization: &[u8],
        now: i64,
    ) -> Result<Option<Rc<Verified>>, Problem> {
        if let Some(verified) = last.get(authorization, self.id, now) {
            self.refuse_revoked(&verified.identity.sub, verified.tv, &verified.kid)?;
            return Ok(Some(verified));
        }
        let Some(token) = bearer_token(authorization) else { return Ok(None) };
        // Boxed: a signature check may fetch the JWKS, a large future that
        // would otherwise be carried (and copied) by every request's future.
        let verified = Box::pin(self.verify_here(token, now)).await?;
        self.refuse_revoked(&verified.identity.sub, verified.tv, &verified.kid)?;
        last.set(authorization, verified.clone());
        Ok(Some(verified))
    }

    /// The caller a bearer token proves, or 401; from this thread's cache
    /// when the token was seen here before.
    pub async fn verify_here(&self, token: &str, now: i64) -> Result<Rc<Verified>, Problem> {
        let hit =
            VERIFIED.with_borrow(|cache| cache.get(token).filter(|v| v.verifier == self.id && v.exp > now).cloned());
        if let Some(verified) = hit {
            return Ok(verified);
        }
        let (identity, exp, tv, kid) = self.verify_shared(token, now).await?;
        let verified = Rc::new(Verified { identity, exp, tv, kid, verifier: self.id, prepared: RefCell::new(None) });
        VERIFIED.with_borrow_mut(|cache| {
            if cache.len() >= self.per_thread {
                cache.retain(|_, v| v.exp > now);
                if cache.len() >= self.per_thread {
                    cache.clear();
                }
            }
            cache.insert(token.into(), verified.clone());
        });
        Ok(verified)
    }

    /// The caller a bearer token proves, or 401.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Problem> {
        let (identity, _, tv, kid) = self.verify_shared(token, chrono::Utc::now().timestamp()).await?;
        self.refuse_revoked(&identity.sub, tv, &kid)?;
        Ok(identity)
    }

    /// 401 for a token of a user whose tokens were revoked after it was
    /// issued, or signed by a revoked key.
    fn refuse_revoked(&self, sub: &str, tv: i64, kid: &str) -> Result<(), Problem> {
        let revoked = self.revoked.load();
        if revoked.users.get(sub).is_some_and(|required| tv < *required) {
            return Err(Problem::unauthenticated("invalid access token: revoked; sign in again"));
        }
        if revoked.keys.contains(kid) {
            return Err(Problem::unauthenticated("invalid access token: its signing key was revoked; sign in again"));
        }
        Ok(())
    }

    /// Learns the revoked signing keys (all of them, each time): tokens they
    /// signed are refused, and they verify nothing more.
    pub fn learn_revoked_keys(&self, kids: Vec<String>) {
        let known = self.revoked.load();
        if kids.iter().all(|kid| known.keys.contains(kid.as_str())) {
            return;
        }
        let mut keys = (**self.keys.load()).clone();
        for kid in &kids {
            keys.remove(kid);
        }
        self.keys.store(Arc::new(keys));
        let mut revoked = (**known).clone();
        revoked.keys = kids.into_iter().map(Arc::from).collect();
        self.revoked.store(Arc::new(revoked));
    }

    /// Learns revocations from the auth service's feed: `(user id, the token
    /// version now required)`. Versions only go up.
    pub fn learn_revocations(&self, revocations: impl IntoIterator<Item = (String, i64)>) {
        let mut known = (**self.revoked.load()).clone();
        let mut changed = false;
        for (user, version) in revocations {
            let entry = known.users.entry(user).or_insert(0);
            if version > *entry {
                *entry = version;
                changed = true;
            }
        }
        if changed {
            self.revoked.store(Arc::new(known));
        }
    }

    async fn verify_shared(&self, token: &str, now: i64) -> Result<Entry, Problem> {
        let shard = &self.cache[(self.hasher.hash_one(token) as usize) % SHARDS];
        if let Some((identity, exp, tv, kid)) = shard.read().expect("token cache").get(token)
            && *exp > now
        {
            return Ok((identity.clone(), *exp, *tv, kid.clone()));
        }
        let (identity, exp, tv, kid) = self.verify_signature(token).await?;
        let mut entries = shard.write().expect("token cache");
        if entries.len() >= self.per_shard {
            entries.retain(|_, (_, exp, _, _)| *exp > now);
            if entries.len() >= self.per_shard {
                entries.clear();
            }
        }
        entries.insert(token.into(), (identity.clone(), exp, tv, kid.clone()));
        Ok((identity, exp, tv, kid))
    }

    async fn verify_signature(&self, token: &str) -> Result<Entry, Problem> {
        let invalid = |why: &str| Problem::unauthenticated(format!("invalid access token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("unsupported algorithm"));
        }
        // RFC 7515 §4.1.11: a token naming header extensions its recipient
        // must understand is refused by one that does not; this one
        // understands none (the auth service never sets `crit`).
        if header.crit.is_some() {
            return Err(invalid("critical header extensions are not understood"));
        }
        let kid = header.kid.ok_or_else(|| invalid("no key id"))?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refetch_for_unknown_kid().await;
                self.key(&kid).ok_or_else(|| invalid("unknown signing key"))?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => invalid("expired"),
                ErrorKind::ImmatureSignature => invalid("not yet valid"),
                ErrorKind::InvalidAudience => invalid("wrong audience"),
                ErrorKind::InvalidIssuer => invalid("wrong issuer"),
                _ => invalid("signature or claims do not verify"),
            }
        })?;
        let claims = data.claims;
        let identity = Identity { sub: claims.sub, username: claims.username, roles: claims.roles };
        Ok((Arc::new(identity), claims.exp, claims.tv, Arc::from(kid.as_str())))
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.load().get(kid).cloned()
    }

    async fn refetch_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFETCH_GAP) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        self.refresh().await;
    }

    /// Fetches the JWKS now; keeps the known keys when the fetch fails.
    pub async fn refresh(&self) -> bool {
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "fetched the JWKS");
                self.keys.store(Arc::new(keys));
                true
            }
            Err(err) => {
                tracing::warn!(url = %self.jwks_url, error = %err, "could not fetch the JWKS");
                false
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let request = Request::get(self.jwks_url.clone()).body(Body::empty())?;
        let response = tokio::time::timeout(Duration::from_secs(3), self.client.request(request)).await??;
        anyhow::ensure!(response.status().is_success(), "status {}", response.status());
        let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
        let jwks: Jwks = serde_json::from_slice(&body)?;
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            // The allow-list: Ed25519 keys for EdDSA, nothing else.
            let eddsa = jwk.kty == "OKP"
                && jwk.crv.as_deref() == Some("Ed25519")
                && jwk.alg.as_deref().is_none_or(|a| a == "EdDSA");
            if let (true, Some(kid), Some(x)) = (eddsa, jwk.kid, jwk.x) {
                keys.insert(kid, DecodingKey::from_ed_components(&x)?);
            }
        }
        Ok(keys)
    }

    /// Forgets expired tokens (called now and then).
    pub fn sweep(&self) {
        let now = chrono::Utc::now().timestamp();
        for shard in &self.cache {
            shard.write().expect("token cache").retain(|_, (_, exp, _, _)| *exp > now);
        }
    }
}

/// Forgets this thread's expired tokens (called now and then by each serving thread).
pub fn forget_expired_here() {
    let now = chrono::Utc::now().timestamp();
    VERIFIED.with_borrow_mut(|cache| cache.retain(|_, v| v.exp > now));
}

/// The token of an `Authorization: Bearer ...` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    bearer_token(headers.get(axum::http::header::AUTHORIZATION)?.as_bytes())
}

/// The token of an `Authorization` header's value, if it is a bearer token.
fn bearer_token(value: &[u8]) -> Option<&str> {
    // Visible ASCII only, as `HeaderValue::to_str` takes it.
    if !value.iter().all(|b| *b == b'\t' || (32..127).contains(b)) {
        return None;
    }
    let (scheme, token) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}
