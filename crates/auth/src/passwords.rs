//! Password hashing: argon2id, off the async runtime, with a bound.
//!
//! Hashes run on the blocking pool, at most `hash_concurrency` at once. A
//! request that would wait behind more than `hash_queue` others is answered
//! 503 with `Retry-After` at once: a login storm sheds load instead of
//! building a queue that answers nobody in time. Unknown usernames are
//! verified against a dummy hash of the same cost, so the response time does
//! not tell who has an account.
//!
//! Sign-ins come first: new hashes (sign-ups, registrations, new passwords)
//! may use at most half the hashing slots and half the queue, so a sign-up
//! storm leaves the other half to the players signing in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use rewards_kit::Problem;
use tokio::sync::Semaphore;

use crate::settings::AuthSettings;

/// How long a request may wait for a hashing slot before it is shed.
const SLOT_WAIT: Duration = Duration::from_secs(2);

pub struct Passwords {
    params: Params,
    slots: Semaphore,
    /// Slots new hashes may hold at once (half of them).
    hashing: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// New hashes waiting, at most half the queue.
    waiting_hashes: AtomicUsize,
    dummy_hash: String,
}

impl Passwords {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Arc<Self>> {
        let params = Params::new(settings.argon2_memory_kib, settings.argon2_iterations, 1, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let slots = match settings.hash_concurrency {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let dummy: [u8; 16] = rand::random();
        let dummy_hash = hasher(&params).hash_password(&dummy).map_err(|e| anyhow::anyhow!("argon2: {e}"))?.to_string();
        Ok(Arc::new(Self {
            params,
            slots: Semaphore::new(slots),
            hashing: Semaphore::new((slots / 2).max(1)),
            waiting: AtomicUsize::new(0),
            max_waiting: settings.hash_queue,
            waiting_hashes: AtomicUsize::new(0),
            dummy_hash,
        }))
    }

    /// The PHC string of `password` (`$argon2id$v=19$m=...`).
    pub async fn hash(self: &Arc<Self>, password: String) -> Result<String, Problem> {
        let params = self.params.clone();
        let half_queue = (self.max_waiting / 2).max(1);
        let _gate = queue_for(&self.hashing, &self.waiting_hashes, half_queue, "too many sign-ups at once").await?;
        self.run(move || hasher(&params).hash_password(password.as_bytes()).map(|h| h.to_string()))
            .await?
            .map_err(|e| Problem::internal_from(format_args!("argon2 hash: {e}")))
    }

    /// Whether `password` matches `hash`; with no hash (unknown user), the
    /// dummy is checked so the answer takes as long, and is false.
    pub async fn verify(self: &Arc<Self>, password: String, hash: Option<String>) -> Result<bool, Problem> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let params = self.params.clone();
        let matched =
            self.run(move || hasher(&params).verify_password(password.as_bytes(), hash.as_str()).is_ok()).await?;
        Ok(known && matched)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Problem> {
        let _permit = queue_for(&self.slots, &self.waiting, self.max_waiting, "too many sign-ins at once").await?;
        tokio::task::spawn_blocking(work).await.map_err(|e| Problem::internal_from(format_args!("hash task: {e}")))
    }
}

/// A permit of `slots`, waited for behind at most `limit` others (counted in
/// `waiting`) and for at most [`SLOT_WAIT`]; otherwise 503 saying `busy`.
async fn queue_for<'a>(
    slots: &'a Semaphore,
    waiting: &AtomicUsize,
    limit: usize,
    busy: &str,
) -> Result<tokio::sync::SemaphorePermit<'a>, Problem> {
    let refused = || Problem::unavailable(format!("{busy}; try again in a moment"), 1);
    if waiting.fetch_add(1, Ordering::AcqRel) >= limit {
        waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(refused());
    }
    let permit = tokio::time::timeout(SLOT_WAIT, slots.acquire()).await;
    waiting.fetch_sub(1, Ordering::AcqRel);
    match permit {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(refused()),
    }
}

fn hasher(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords(queue: usize, concurrency: usize) -> Arc<Passwords> {
        let settings = AuthSettings { hash_queue: queue, hash_concurrency: concurrency, ..AuthSettings::for_tests() };
        Passwords::new(&settings).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let p = passwords(8, 1);
        let hash = p.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(p.verify("correct horse".into(), Some(hash.clone())).await.unwrap());
        assert!(!p.verify("wrong horse".into(), Some(hash)).await.unwrap());
        assert!(!p.verify("correct horse".into(), None).await.unwrap(), "unknown users never match");
    }

    #[tokio::test]
    async fn a_storm_is_shed_with_503_instead_of_queueing() {
        // Expensive hashes, one slot, room for two waiters.
        let settings = AuthSettings {
            argon2_memory_kib: 8 * 1024,
            argon2_iterations: 4,
            hash_concurrency: 1,
            hash_queue: 2,
            ..AuthSettings::default()
        };
        let p = Passwords::new(&settings).unwrap();
        let attempts: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn({
                    let p = p.clone();
                    async move { p.hash("password".into()).await }
                })
            })
            .collect();
        let mut shed = 0;
        for attempt in attempts {
            if let Err(problem) = attempt.await.unwrap() {
                assert_eq!(problem.status.as_u16(), 503);
                assert_eq!(problem.retry_after, Some(1));
                shed += 1;
            }
        }
        assert!(shed >= 8, "most of the storm is shed, {shed} were");
    }

    #[tokio::test]
    async fn sign_ins_are_served_during_a_sign_up_storm() {
        // Expensive hashes, two slots, room for eight waiters.
        let settings = AuthSettings {
            argon2_memory_kib: 8 * 1024,
            argon2_iterations: 4,
            hash_concurrency: 2,
            hash_queue: 8,
            ..AuthSettings::default()
        };
        let p = Passwords::new(&settings).unwrap();
        let known = p.hash("password".into()).await.unwrap();
        let signups: Vec<_> = (0..30)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.hash("password".into()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let signins: Vec<_> = (0..4)
            .map(|_| {
                let (p, known) = (p.clone(), known.clone());
                tokio::spawn(async move { p.verify("password".into(), Some(known)).await })
            })
            .collect();
        for signin in signins {
            assert!(signin.await.unwrap().expect("a sign-in is never shed behind sign-ups"));
        }
        let mut shed = 0;
        for signup in signups {
            shed += usize::from(signup.await.unwrap().is_err());
        }
        assert!(shed >= 20, "the sign-up storm is shed at half the queue, {shed} were");
    }
}
