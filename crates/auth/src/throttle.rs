//! Failed-login throttling, per username and client address together, per
//! address, and per username from everywhere.
//!
//! Each key counts failures in a fixed window that starts at its first
//! failure. At the limit, logins for that key are refused with 429 and
//! `Retry-After` (the rest of the window) before any password is checked, so
//! guessing costs the attacker time and us no hashing. The keys:
//! - a username from one address (`login_failures_per_user`): the lockout
//!   an attacker guessing one account meets, which does not lock the account's
//!   owner out from anywhere else;
//! - an address (`login_failures_per_address`, looser): one address spraying
//!   many usernames, without locking out everyone behind a shared address at
//!   the first few typos;
//! - a username from everywhere ([`SPREAD`] times the per-user limit): one
//!   account guessed from many addresses.
//!
//! A correct password clears its username's counts for that address; the
//! window's end clears every count. Counts live in this process: with
//! several auth instances behind the gateway each keeps its own (an attacker
//! gets at most N times the budget).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rewards_kit::Problem;

use crate::settings::AuthSettings;

/// Beyond this many tracked keys, expired windows are swept on insert.
const SWEEP_AT: usize = 10_000;
/// A username's failures from all addresses may reach this many times the
/// per-address-and-username limit before it is refused everywhere.
pub const SPREAD: u32 = 10;

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

    /// Every key a sign-in counts against, with its limit.
    fn keys(&self, username: &str, addr: Option<IpAddr>) -> Vec<(String, u32)> {
        let user = crate::store::username_key(username);
        let mut keys = vec![(format!("user:{user}"), self.per_user.saturating_mul(SPREAD))];
        match addr {
            Some(addr) => {
                keys.push((format!("pair:{addr}:{user}"), self.per_user));
                keys.push((format!("addr:{addr}"), self.per_address));
            }
            // No address vouched for: the username alone is the pair.
            None => keys.push((format!("pair::{user}"), self.per_user)),
        }
        keys
    }

    /// 429 when any of the sign-in's keys has used up its failures.
    pub fn check(&self, username: &str, addr: Option<IpAddr>, now: DateTime<Utc>) -> Result<(), Problem> {
        let counts = self.counts.lock().expect("throttle lock");
        let blocked_until = self
            .keys(username, addr)
            .into_iter()
            .filter_map(|(key, limit)| {
                let window = counts.get(&key)?;
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
        let keys = self.keys(username, addr);
        let mut counts = self.counts.lock().expect("throttle lock");
        if counts.len() >= SWEEP_AT {
            let window = self.window;
            counts.retain(|_, w| w.started + window > now);
        }
        for (key, _) in keys {
            let entry = counts.entry(key).or_insert(Window { failures: 0, started: now });
            if entry.started + self.window <= now {
                *entry = Window { failures: 0, started: now };
            }
            entry.failures += 1;
        }
    }

    /// A correct password: the username's count from that address starts
    /// over (the address's and the username's overall counts stand).
    pub fn record_success(&self, username: &str, addr: Option<IpAddr>) {
        let pair = self.keys(username, addr).into_iter().find(|(key, _)| key.starts_with("pair:"));
        if let Some((key, _)) = pair {
            self.counts.lock().expect("throttle lock").remove(&key);
        }
    }
}

/// Sign-ups per client address, and referral credit per referrer, in fixed
/// windows: a script signing up accounts from one address, or naming one
/// referrer to meet an `inviteFriends` condition, is answered 429 with
/// `Retry-After` after a few. A limit of 0 is none. Without an address (a
/// call that no gateway vouched for) only the referrer counts.
pub struct SignupThrottle {
    per_address: u32,
    per_referrer: u32,
    window: Duration,
    counts: Mutex<HashMap<String, Window>>,
}

impl SignupThrottle {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            per_address: settings.signups_per_address,
            per_referrer: settings.referrals_per_referrer,
            window: Duration::seconds(settings.signup_window_secs as i64),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a sign-up from `addr` naming `referrer_id`, or 429 when either
    /// has had its share of the window (then nothing is counted).
    pub fn admit(&self, addr: Option<IpAddr>, referrer_id: Option<&str>, now: DateTime<Utc>) -> Result<(), Problem> {
        let keys: Vec<(String, u32, &str)> = [
            addr.map(|a| (format!("addr:{a}"), self.per_address, "too many sign-ups from your address")),
            referrer_id
                .map(|r| (format!("referrer:{r}"), self.per_referrer, "too many sign-ups have named this referrer")),
        ]
        .into_iter()
        .flatten()
        .filter(|(_, limit, _)| *limit > 0)
        .collect();
        let mut counts = self.counts.lock().expect("signup throttle lock");
        if counts.len() >= SWEEP_AT {
            let window = self.window;
            counts.retain(|_, w| w.started + window > now);
        }
        for (key, limit, why) in &keys {
            if let Some(window) = counts.get(key)
                && window.failures >= *limit
                && window.started + self.window > now
            {
                let secs = (window.started + self.window - now).num_seconds().max(1) as u64;
                return Err(Problem::rate_limited(format!("{why}; try again later"), secs));
            }
        }
        for (key, _, _) in keys {
            let entry = counts.entry(key).or_insert(Window { failures: 0, started: now });
            if entry.started + self.window <= now {
                *entry = Window { failures: 0, started: now };
            }
            entry.failures += 1;
        }
        Ok(())
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

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_username_guessed_from_one_address_is_blocked_there_only_until_the_window_ends() {
        let t = throttle();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let attacker = ip("203.0.113.1");
        for _ in 0..3 {
            assert!(t.check("Alice", attacker, now).is_ok());
            t.record_failure("Alice", attacker, now);
        }
        let refused = t.check("alice", attacker, now + Duration::seconds(10)).unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.retry_after), (429, Some(50)));
        assert!(t.check("alice", ip("198.51.100.9"), now).is_ok(), "the owner elsewhere is not locked out");
        assert!(t.check("bob", attacker, now).is_ok(), "other users from that address are not blocked yet");
        assert!(t.check("alice", attacker, now + Duration::seconds(60)).is_ok(), "the window ended");
    }

    #[test]
    fn a_username_guessed_from_many_addresses_is_blocked_everywhere() {
        let t = throttle();
        let now = Utc::now();
        for i in 0..(3 * SPREAD) {
            t.record_failure("dave", ip(&format!("10.0.{}.{}", i / 200, i % 200)), now);
        }
        assert_eq!(t.check("dave", ip("192.0.2.1"), now).unwrap_err().status.as_u16(), 429);
    }

    #[test]
    fn an_address_spraying_many_usernames_is_blocked() {
        let t = throttle();
        let now = Utc::now();
        let addr = ip("198.51.100.7");
        for name in ["a1", "a2", "a3", "a4", "a5"] {
            t.record_failure(name, addr, now);
        }
        assert_eq!(t.check("fresh-name", addr, now).unwrap_err().status.as_u16(), 429);
        assert!(t.check("fresh-name", ip("198.51.100.8"), now).is_ok());
    }

    #[test]
    fn success_clears_the_username_at_that_address() {
        let t = throttle();
        let now = Utc::now();
        t.record_failure("carol", None, now);
        t.record_failure("carol", None, now);
        t.record_success("carol", None);
        t.record_failure("carol", None, now);
        t.record_failure("carol", None, now);
        assert!(t.check("carol", None, now).is_ok());
    }
}
