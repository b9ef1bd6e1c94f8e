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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rewards_kit::clock::from_micros;
use serde_json::{Value, json};

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
    /// The reward as a claim records it: `{name, type, details, quantity}` as JSON.
    pub snapshot: String,
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
        let snapshot = json!({
            "name": reward.name,
            "type": reward.kind,
            "details": serde_json::from_str::<Value>(&reward.details).unwrap_or(Value::Null),
            "quantity": reward.quantity,
        })
        .to_string();
        Some(Self { event, reward, condition, window, snapshot, reward_version, event_version })
    }

    /// Claimable at `now` (micros): `ACTIVE` and inside the window.
    pub fn open_at(&self, now: i64) -> bool {
        self.event.status == crate::domain::EventStatus::Active
            && now >= self.event.start_at
            && now <= self.event.end_at
    }
}

/// Most rewards remembered; past it the cache starts over.
const MAX_TARGETS: usize = 100_000;

#[derive(Debug)]
pub struct Targets {
    fresh_for: Duration,
    by_reward: RwLock<HashMap<String, (Instant, Arc<Target>)>>,
    /// Bumped by every change forgotten: a target read before a change must
    /// not be remembered after it.
    generation: AtomicU64,
    /// Turns at reading a target from the store, striped by reward: when a
    /// remembered target expires under load, the claims that miss it at once
    /// wait for the first one's read instead of each reading it again.
    reads: [tokio::sync::Mutex<()>; READ_STRIPES],
}

/// Stripes of [`Targets::reads`] (bounded, whatever rewards are asked for).
const READ_STRIPES: usize = 16;

impl Targets {
    pub fn new(fresh_for: Duration) -> Self {
        Self {
            fresh_for,
            by_reward: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            reads: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }

    /// Waits for the turn to read `reward_id`'s target from the store; look
    /// again with [`Targets::get`] once it comes (the previous turn may have
    /// read it). No turns are taken when nothing is remembered.
    pub async fn read_turn(&self, reward_id: &str) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.fresh_for.is_zero() {
            return None;
        }
        let hash = reward_id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Some(self.reads[(hash % READ_STRIPES as u64) as usize].lock().await)
    }

    /// Taken before reading a target from the store; see [`Targets::put`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, reward_id: &str) -> Option<Arc<Target>> {
        let entries = self.by_reward.read().expect("targets");
        let (at, target) = entries.get(reward_id)?;
        (at.elapsed() < self.fresh_for).then(|| target.clone())
    }

    /// Remembers `target`, read from the store after [`Targets::generation`]
    /// said `read_in` — unless something was forgotten since.
    pub fn put(&self, target: Arc<Target>, read_in: u64) {
        if self.fresh_for.is_zero() {
            return;
        }
        let mut entries = self.by_reward.write().expect("targets");
        if self.generation() != read_in {
            return;
        }
        if entries.len() >= MAX_TARGETS {
            entries.clear();
        }
        entries.insert(target.reward.id.clone(), (Instant::now(), target));
    }

    pub fn forget_reward(&self, reward_id: &str) {
        let mut entries = self.by_reward.write().expect("targets");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(reward_id);
    }

    pub fn forget_event(&self, event_id: &str) {
        let mut entries = self.by_reward.write().expect("targets");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, (_, t)| t.event.id != event_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        let event = EventRow {
            id: "e".into(),
            name: "Launch".into(),
            description: String::new(),
            condition: r#"{"type":"none"}"#.into(),
            start_at: 0,
            end_at: 10,
            time_zone: "UTC".into(),
            status: crate::domain::EventStatus::Active,
            created_by: "op".into(),
            created_at: 0,
            updated_at: 0,
        };
        let reward = RewardRow {
            id: "r".into(),
            event_id: "e".into(),
            name: "Gold".into(),
            kind: "CURRENCY".into(),
            details: "{}".into(),
            quantity: 1,
            stock: None,
            remaining: None,
            per_user_limit: 1,
            requires_approval: false,
            created_by: "op".into(),
            created_at: 0,
            updated_at: 0,
        };
        Arc::new(Target::new(event, reward, (0, 0)).expect("a valid condition"))
    }

    #[test]
    fn a_target_read_before_a_change_is_not_remembered_after_it() {
        let targets = Targets::new(Duration::from_secs(60));
        let read_in = targets.generation();
        targets.forget_event("e");
        targets.put(target(), read_in);
        assert!(targets.get("r").is_none(), "read before the change: not remembered");
        targets.put(target(), targets.generation());
        assert!(targets.get("r").is_some());
        targets.forget_reward("r");
        assert!(targets.get("r").is_none());
    }
}
