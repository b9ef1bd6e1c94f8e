//! Failed-login throttling, per username and per client address.
//!
//! Each key counts failures in a fixed window that starts at its first
//! failure. At the limit, logins for that key are refused with 429 and
//! `Retry-After` (the rest of the window) before any password is checked, so
//! guessing costs the attacker time and us no hashing. A correct password
//! clears the username's count; the window's end clears both.
//!
//! Counts live in this process: with several auth instances behind the
//! gateway each keeps its own (an attacker gets at most N times the budget).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rewards_kit::Problem;

use crate::settings::AuthSettings;

/// Beyond this many tracked keys, expired windows are swept on insert.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    started: DateTime<Utc>,
}

pub struct LoginThrottle {
    per_user: u32,
    per_address: u32,
    window: Duration,
    counts: Mutex<HashMap<String, Window>>,
}

impl LoginThrottle {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            per_user: settings.login_failures_per_user,
            per_address: settings.login_failures_per_address,
            window: settings.failure_window(),
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn keys(username: &str, addr: Option<IpAddr>) -> (String, Option<String>) {
        (format!("user:{}", crate::store::username_key(username)), addr.map(|a| format!("addr:{a}")))
    }

    /// 429 when either the username or the address has used up its failures.
    pub fn check(&self, username: &str, addr: Option<IpAddr>, now: DateTime<Utc>) -> Result<(), Problem> {
        let (user_key, addr_key) = Self::keys(username, addr);
        let counts = self.counts.lock().expect("throttle lock");
        let blocked_until = [(Some(user_key), self.per_user), (addr_key, self.per_address)]
            .into_iter()
            .filter_map(|(key, limit)| {
                let window = counts.get(&key?)?;
                let ends = window.started + self.window;
                (window.failures >= limit && ends > now).then_some(ends)
            })
            .max();
        match blocked_until {
            Some(until) => {
                let secs = (until - now).num_seconds().max(1) as u64;
                Err(Problem::rate_limited("too many failed sign-ins; try again later", secs))
            }
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, username: &str, addr: Option<IpAddr>, now: DateTime<Utc>) {
        let (user_key, addr_key) = Self::keys(username, addr);
        let mut counts = self.counts.lock().expect("throttle lock");
        if counts.len() >= SWEEP_AT {
            let window = self.window;
            counts.retain(|_, w| w.started + window > now);
        }
        for key in std::iter::once(user_key).chain(addr_key) {
            let entry = counts.entry(key).or_insert(Window { failures: 0, started: now });
            if entry.started + self.window <= now {
                *entry = Window { failures: 0, started: now };
            }
            entry.failures += 1;
        }
    }

    pub fn record_success(&self, username: &str) {
        let (user_key, _) = Self::keys(username, None);
        self.counts.lock().expect("throttle lock").remove(&user_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn throttle() -> LoginThrottle {
        let settings = AuthSettings {
            login_failures_per_user: 3,
            login_failures_per_address: 5,
            login_failure_window_secs: 60,
            ..AuthSettings::for_tests()
        };
        LoginThrottle::new(&settings)
    }

    #[test]
    fn a_username_is_blocked_after_its_failures_until_the_window_ends() {
        let t = throttle();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let addr: Option<IpAddr> = Some("203.0.113.1".parse().unwrap());
        for _ in 0..3 {
            assert!(t.check("Alice", addr, now).is_ok());
            t.record_failure("Alice", addr, now);
        }
        let refused = t.check("alice", addr, now + Duration::seconds(10)).unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.retry_after), (429, Some(50)));
        assert!(t.check("bob", addr, now).is_ok(), "other users from that address are not blocked yet");
        assert!(t.check("alice", addr, now + Duration::seconds(60)).is_ok(), "the window ended");
    }

    #[test]
    fn an_address_spraying_many_usernames_is_blocked() {
        let t = throttle();
        let now = Utc::now();
        let addr: Option<IpAddr> = Some("198.51.100.7".parse().unwrap());
        for name in ["a1", "a2", "a3", "a4", "a5"] {
            t.record_failure(name, addr, now);
        }
        assert_eq!(t.check("fresh-name", addr, now).unwrap_err().status.as_u16(), 429);
        assert!(t.check("fresh-name", Some("198.51.100.8".parse().unwrap()), now).is_ok());
    }

    #[test]
    fn success_clears_the_username() {
        let t = throttle();
        let now = Utc::now();
        t.record_failure("carol", None, now);
        t.record_failure("carol", None, now);
        t.record_success("carol");
        t.record_failure("carol", None, now);
        t.record_failure("carol", None, now);
        assert!(t.check("carol", None, now).is_ok());
    }
}
