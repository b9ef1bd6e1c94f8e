//! Signing keys and access tokens.
//!
//! Access tokens are EdDSA (Ed25519) JWTs with the signing key's `kid` in the
//! header. Keys live in the auth store, so every auth instance signs with the
//! same ones. A key is published at `/.well-known/jwks.json` from the moment
//! it is created, signs from its `active_from` on (a rotation sets that a
//! lead time ahead, so verifiers learn the key before they meet a token it
//! signed), and stays published until the tokens it signed have expired.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rewards_kit::Problem;
use rewards_kit::clock::{SharedClock, from_micros, to_micros};
use rewards_kit::identity::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::store::{AuthStore, KeyRecord};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user's id.
    pub sub: String,
    pub username: String,
    pub roles: Vec<Role>,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// The user's token version when it was issued: a gateway refuses it
    /// once the user's tokens are revoked (the version moved on).
    #[serde(default)]
    pub tv: i64,
}

/// RFC 8410: the PKCS#8 v1 wrapping of a 32-byte Ed25519 seed is this fixed
/// prefix followed by the seed.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The signing half of a stored key, as jsonwebtoken takes it.
pub fn encoding_key(key: &KeyRecord) -> EncodingKey {
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&PKCS8_ED25519_PREFIX);
    der.extend_from_slice(&key.secret_key);
    EncodingKey::from_ed_der(&der)
}

/// A fresh key that signs from `active_from` on.
pub fn generate_key(now: DateTime<Utc>, active_from: DateTime<Utc>) -> KeyRecord {
    let seed: [u8; 32] = rand::random();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    KeyRecord {
        kid: uuid::Uuid::now_v7().simple().to_string(),
        secret_key: seed.to_vec(),
        public_key: public.to_vec(),
        created_at: to_micros(now),
        active_from: to_micros(active_from),
    }
}

/// The keys known at one moment, newest `active_from` first.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<KeyRecord>,
}

impl KeyRing {
    pub fn new(mut keys: Vec<KeyRecord>) -> Self {
        keys.sort_by(|a, b| b.active_from.cmp(&a.active_from).then(b.created_at.cmp(&a.created_at)));
        Self { keys }
    }

    /// The key that signs at `now`: the newest already active.
    pub fn signer(&self, now: DateTime<Utc>) -> Option<&KeyRecord> {
        let now = to_micros(now);
        self.keys.iter().find(|k| k.active_from <= now)
    }

    /// The keys a verifier needs at `now`: every key not yet active, the
    /// signing key, and older keys whose last tokens may not have expired.
    pub fn published(&self, now: DateTime<Utc>, access_ttl: Duration) -> Vec<&KeyRecord> {
        let now_us = to_micros(now);
        let ttl_us = access_ttl.num_microseconds().unwrap_or(i64::MAX);
        self.keys
            .iter()
            .enumerate()
            .filter(|(i, key)| {
                // A key stops signing when the next newer active key starts.
                let superseded_at =
                    self.keys[..*i].iter().rev().map(|k| k.active_from).find(|&t| t <= now_us && t > key.active_from);
                match superseded_at {
                    None => true,
                    Some(at) => at.saturating_add(ttl_us) > now_us,
                }
            })
            .map(|(_, key)| key)
            .collect()
    }

    pub fn jwks(&self, now: DateTime<Utc>, access_ttl: Duration) -> Value {
        let keys: Vec<Value> = self
            .published(now, access_ttl)
            .into_iter()
            .map(|k| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": B64.encode(&k.public_key),
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// The service's keys, cached and reread from the store now and then so a
/// rotation made by another process (or instance) is picked up.
pub struct Keys {
    store: AuthStore,
    clock: SharedClock,
    reload_every: std::time::Duration,
    cached: RwLock<(KeyRing, Instant)>,
}

impl Keys {
    /// Loads the keys, creating the first one on a new store.
    pub async fn load(
        store: AuthStore,
        clock: SharedClock,
        reload_every: std::time::Duration,
    ) -> anyhow::Result<Arc<Self>> {
        if store.signing_keys().await?.is_empty() {
            let now = clock.now();
            store.insert_key(&generate_key(now, now)).await?;
            tracing::info!("created the first access-token signing key");
        }
        let ring = KeyRing::new(store.signing_keys().await?);
        Ok(Arc::new(Self { store, clock, reload_every, cached: RwLock::new((ring, Instant::now())) }))
    }

    /// The current key ring, reread from the store when stale.
    pub async fn ring(&self) -> Result<KeyRing, Problem> {
        {
            let cached = self.cached.read().await;
            if cached.1.elapsed() < self.reload_every {
                return Ok(cached.0.clone());
            }
        }
        self.reload().await
    }

    /// Rereads the keys from the store now.
    pub async fn reload(&self) -> Result<KeyRing, Problem> {
        let ring = KeyRing::new(self.store.signing_keys().await?);
        *self.cached.write().await = (ring.clone(), Instant::now());
        Ok(ring)
    }

    /// Signs an access token for `claims`.
    pub async fn sign(&self, claims: &AccessClaims) -> Result<String, Problem> {
        let ring = self.ring().await?;
        let key = ring
            .signer(self.clock.now())
            .ok_or_else(|| Problem::internal_from("no active signing key in the auth store"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &encoding_key(key))
            .map_err(|e| Problem::internal_from(format_args!("signing an access token: {e}")))
    }
}

/// Adds a key that starts signing `lead` from now; the current key keeps
/// signing until then and stays published until its tokens have expired.
pub async fn rotate(store: &AuthStore, now: DateTime<Utc>, lead: Duration) -> anyhow::Result<KeyRecord> {
    let key = generate_key(now, now + lead);
    store.insert_key(&key).await?;
    Ok(key)
}

/// When a key starts signing, for operators.
pub fn active_from(key: &KeyRecord) -> DateTime<Utc> {
    from_micros(key.active_from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    #[test]
    fn rotation_publishes_before_signing_and_retires_after_the_last_token_expires() {
        let ttl = Duration::minutes(15);
        let old = generate_key(t(0), t(0));
        let new = generate_key(t(100), t(105)); // rotated at 100 with a 5-minute lead
        let ring = KeyRing::new(vec![old.clone(), new.clone()]);
        let kids = |at| ring.published(t(at), ttl).into_iter().map(|k| k.kid.clone()).collect::<Vec<_>>();

        assert_eq!(ring.signer(t(50)).unwrap().kid, old.kid);
        assert_eq!(ring.signer(t(104)).unwrap().kid, old.kid, "the new key does not sign during the lead");
        assert_eq!(kids(101), [new.kid.clone(), old.kid.clone()], "but it is published");
        assert_eq!(ring.signer(t(105)).unwrap().kid, new.kid);
        assert_eq!(kids(119), [new.kid.clone(), old.kid.clone()], "old tokens (signed until 105) live until 120");
        assert_eq!(kids(120), vec![new.kid], "then the old key is gone");
    }

    #[test]
    fn the_jwks_lists_okp_ed25519_keys() {
        let key = generate_key(t(0), t(0));
        let jwks = KeyRing::new(vec![key.clone()]).jwks(t(1), Duration::minutes(15));
        let jwk = &jwks["keys"][0];
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str()),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
        );
        assert_eq!(jwk["kid"], key.kid);
        assert_eq!(B64.decode(jwk["x"].as_str().unwrap()).unwrap(), key.public_key);
        assert!(jwk.get("d").is_none(), "never the private part");
    }
}
