//! What the claim path knows of the catalog without asking the store: each
//! claimed reward with its event, its parsed condition and window, kept for
//! a moment (`claim_cache_ms`) and forgotten at once when this process
//! changes either.
//!
//! It answers the early refusals (404, `EVENT_NOT_ACTIVE`) and says which
//! condition to check. It never decides a grant on its own: the grant's batch
//! compares the versions (a counter every change bumps) of the reward and the
//! event it was checked against with the rows it locks, and a claim checked against a
//! changed one is checked again — so a change made through another instance
//! holds for every grant at once. Only a refusal (not active, condition not
//! met) can rest on a view up to `claim_cache_ms` old.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rewards_kit::clock::from_micros;
use serde_json::Value;

use crate::condition::Condition;
use crate::dates;
use crate::evaluator::{Window, window_of};
use crate::store::{EventRow, RewardRow};

/// A reward as a claim sees it.
#[derive(Debug)]
pub struct Target {
    pub event: EventRow,
    pub reward: RewardRow,
    pub condition: Condition,
    pub window: Window,
    /// The versions of the reward and of the event these rows are (at most).
    pub reward_version: i64,
    pub event_version: i64,
}

impl Target {
    /// `None` when the stored condition does not parse (a bug: conditions are
    /// validated when written).
    pub fn new(event: EventRow, reward: RewardRow, (reward_version, event_version): (i64, i64)) -> Option<Self> {
        let condition = serde_json::from_str::<Value>(&event.condition)
            .ok()
            .and_then(|v| Condition::parse(&v, "condition").ok())?;
        let tz = dates::time_zone(&event.time_zone).unwrap_or(chrono_tz::Tz::UTC);
        let window = window_of(from_micros(event.start_at), from_micros(event.end_at), tz);
        Some(Self { event, reward, condition, window, reward_version, event_version })
    }

    /// Claimable at `now` (micros): `ACTIVE` and inside the window.
    pub fn open_at(&self, now: i64) -> bool {
        self.event.status == "ACTIVE" && now >= self.event.start_at && now <= self.event.end_at
    }
}

/// Most rewards remembered; past it the cache starts over.
const MAX_TARGETS: usize = 100_000;

#[derive(Debug)]
pub struct Targets {
    fresh_for: Duration,
    by_reward: RwLock<HashMap<String, (Instant, Arc<Target>)>>,
}

impl Targets {
    pub fn new(fresh_for: Duration) -> Self {
        Self { fresh_for, by_reward: RwLock::new(HashMap::new()) }
    }

    pub fn get(&self, reward_id: &str) -> Option<Arc<Target>> {
        let entries = self.by_reward.read().expect("targets");
        let (at, target) = entries.get(reward_id)?;
        (at.elapsed() < self.fresh_for).then(|| target.clone())
    }

    pub fn put(&self, target: Arc<Target>) {
        if self.fresh_for.is_zero() {
            return;
        }
        let mut entries = self.by_reward.write().expect("targets");
        if entries.len() >= MAX_TARGETS {
            entries.clear();
        }
        entries.insert(target.reward.id.clone(), (Instant::now(), target));
    }

    pub fn forget_reward(&self, reward_id: &str) {
        self.by_reward.write().expect("targets").remove(reward_id);
    }

    pub fn forget_event(&self, event_id: &str) {
        self.by_reward.write().expect("targets").retain(|_, (_, t)| t.event.id != event_id);
    }
}
