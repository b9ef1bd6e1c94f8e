//! Time, injectable: services read "now" from a [`Clock`] so tests can move
//! it (token expiry, throttling windows, event days) without sleeping.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Starts at the real current time.
    pub fn starting_now() -> Self {
        Self::new(Utc::now())
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = at;
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// A shared handle to whichever clock a service runs on.
#[derive(Clone)]
pub struct SharedClock(Arc<dyn Clock>);

impl SharedClock {
    pub fn new(clock: impl Clock) -> Self {
        Self(Arc::new(clock))
    }

    pub fn system() -> Self {
        Self::new(SystemClock)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedClock({})", self.now())
    }
}

/// Stores keep instants as integer microseconds since the Unix epoch: the
/// same type, order and precision on SQLite and PostgreSQL.
pub fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_and_manual_clocks_move() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + chrono::Duration::microseconds(7);
        assert_eq!(from_micros(to_micros(at)), at);
        let clock = ManualClock::new(at);
        let shared = SharedClock::new(clock.clone());
        clock.advance(chrono::Duration::days(1));
        assert_eq!(shared.now(), at + chrono::Duration::days(1));
    }
}
