//! Rate limits per client address and per signed-in user (GCRA, via
//! governor): over the limit is 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rewards_kit::Problem;

use crate::config::GatewaySettings;

pub struct Limits {
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limits {
    pub fn new(settings: &GatewaySettings) -> Self {
        Self {
            per_address: quota(settings.rate_per_address, settings.burst_per_address).map(RateLimiter::keyed),
            per_user: quota(settings.rate_per_user, settings.burst_per_user).map(RateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    pub fn check_address(&self, addr: IpAddr) -> Result<(), Problem> {
        match &self.per_address {
            Some(limiter) => limiter.check_key(&addr).map_err(|not_until| self.too_many(&not_until, "this address")),
            None => Ok(()),
        }
    }

    pub fn check_user(&self, user: &str) -> Result<(), Problem> {
        match &self.per_user {
            Some(limiter) => {
                limiter.check_key(&user.to_owned()).map_err(|not_until| self.too_many(&not_until, "this account"))
            }
            None => Ok(()),
        }
    }

    fn too_many(&self, not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>, who: &str) -> Problem {
        let wait = not_until.wait_time_from(self.clock.now());
        Problem::rate_limited(format!("too many requests from {who}"), wait.as_secs_f64().ceil() as u64)
    }

    /// Forgets keys whose buckets are full again (called now and then).
    pub fn sweep(&self) {
        if let Some(l) = &self.per_address {
            l.retain_recent();
        }
        if let Some(l) = &self.per_user {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_and_then_429_with_retry_after() {
        let settings = GatewaySettings {
            rate_per_address: 1,
            burst_per_address: 3,
            rate_per_user: 0,
            ..GatewaySettings::default()
        };
        let limits = Limits::new(&settings);
        let addr: IpAddr = "203.0.113.5".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check_address(addr).is_ok());
        }
        let refused = limits.check_address(addr).unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.retry_after), (429, Some(1)));
        assert!(limits.check_address("203.0.113.6".parse().unwrap()).is_ok());
        assert!(limits.check_user("anyone").is_ok(), "0 disables the per-user limit");
    }
}
