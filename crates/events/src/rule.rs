//! The grant rule, in the contract's order, once for both stores.
//!
//! `POST /reward-claims` answers, top to bottom:
//!
//! 1. 404 `NOT_FOUND`: no such event, or the reward is not one of its rewards;
//! 2. 400 `EVENT_NOT_ACTIVE`: the event is not `ACTIVE`, or now is outside its window;
//! 3. 409 `DUPLICATE_CLAIM`: the player holds `perUserLimit` live claims of the reward;
//! 4. 400 `CONDITION_NOT_MET`: the event's condition is not met (recorded as one
//!    `REJECTED` claim per player and reward, refreshed on each retry);
//! 5. 409 `OUT_OF_STOCK`: no unit of stock left;
//! 6. 201: the claim, in the lowest free per-user slot, one unit of stock taken.
//!
//! Steps 1 and 2 are answered from the claim path's memory of the catalog
//! ([`admit`]); so is step 5 for a reward known to be sold out at its current
//! version ([`SoldOut`]): nothing can be granted then, and a sold-out storm must
//! not cost the store a statement per refusal (such a claim is told
//! `OUT_OF_STOCK` even by a player who holds the limit or misses the condition).
//! The condition's verdict is worked out before the claim joins a batch. Steps
//! 3 to 6 are [`decide`]d for a whole batch at once, in order of arrival,
//! against what the batch has locked and read ([`Snapshot`]): each store only
//! locks and reads, then writes what was decided.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::http::StatusCode;
use rewards_kit::Problem;
use rewards_kit::problem::{FieldError, ProblemCode};

use crate::targets::Target;

/// A claim as the batch decides it.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub claim_id: &'a str,
    pub user_id: &'a str,
    pub event_id: &'a str,
    pub reward_id: &'a str,
    /// The versions of the reward and of its event the claim was checked against.
    pub reward_version: i64,
    pub event_version: i64,
    /// Whether the event's condition was met for this player.
    pub condition_met: bool,
    /// The caller's `Idempotency-Key`, if any.
    pub key: Option<&'a str>,
}

/// A reward as a batch locked it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, sqlx::FromRow)]
pub struct RewardState {
    pub id: String,
    pub event_id: String,
    /// `None`: unlimited.
    pub remaining: Option<i64>,
    pub per_user_limit: i64,
    pub reward_version: i64,
    pub event_version: i64,
}

/// A live claim's slot (`PENDING`, `APPROVED`, `PAID` or `FAILED`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, sqlx::FromRow)]
pub struct HeldSlot {
    pub user_id: String,
    pub reward_id: String,
    pub slot: i64,
}

/// An idempotency key of the batch, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, sqlx::FromRow)]
pub struct KeyState {
    pub user_id: String,
    pub key: String,
    /// The claim the key's first request chose.
    pub claim_id: Option<String>,
    pub answered: bool,
}

/// What a batch has locked and read: its rewards (with their events'
/// versions), the live slots of its players in them, and its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Snapshot {
    #[serde(default)]
    pub rewards: Vec<RewardState>,
    #[serde(default)]
    pub slots: Vec<HeldSlot>,
    #[serde(default)]
    pub keys: Vec<KeyState>,
}

/// What became of one claim in its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Written in `slot`, one unit of stock taken (when the reward has stock).
    Granted {
        slot: i64,
    },
    /// The reward or its event changed after the claim was checked (or the
    /// reward is gone): check the claim again.
    Stale,
    Duplicate {
        limit: i64,
    },
    /// Recorded as the player's refusal of this reward.
    ConditionNotMet,
    OutOfStock,
    /// The claim's idempotency key was answered already, or belongs to
    /// another claim: the stored answer is the answer.
    Replay,
}

impl Verdict {
    /// The client's answer, when it is a refusal the batch decided.
    pub fn refusal(self, unmet: &str) -> Option<Problem> {
        match self {
            Verdict::Duplicate { limit } => Some(duplicate(limit)),
            Verdict::ConditionNotMet => Some(condition_not_met(unmet)),
            Verdict::OutOfStock => Some(out_of_stock()),
            Verdict::Granted { .. } | Verdict::Stale | Verdict::Replay => None,
        }
    }
}

/// A batch's verdicts, in the order of its claims, and what it does to stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub verdicts: Vec<Verdict>,
    /// Units taken from each limited reward (only those with a grant).
    pub taken: Vec<(String, i64)>,
    /// Each locked limited reward's stock after the batch, with its version.
    pub left: Vec<(String, i64, i64)>,
}

/// Steps 3 to 6 for a batch, in order of arrival.
pub fn decide(asks: &[Ask<'_>], snapshot: &Snapshot) -> Decided {
    let rewards: HashMap<&str, &RewardState> = snapshot.rewards.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut remaining: HashMap<&str, Option<i64>> = rewards.iter().map(|(id, r)| (*id, r.remaining)).collect();
    let mut held: HashMap<(&str, &str), Vec<i64>> = HashMap::new();
    for s in &snapshot.slots {
        held.entry((s.user_id.as_str(), s.reward_id.as_str())).or_default().push(s.slot);
    }
    // A key may be used by the first of its claims in the batch, if it is
    // still unanswered and names that claim.
    let mut open_keys: HashMap<(&str, &str), &str> = snapshot
        .keys
        .iter()
        .filter(|k| !k.answered)
        .filter_map(|k| Some(((k.user_id.as_str(), k.key.as_str()), k.claim_id.as_deref()?)))
        .collect();

    let verdicts = asks
        .iter()
        .map(|ask| {
            if let Some(key) = ask.key {
                match open_keys.remove(&(ask.user_id, key)) {
                    Some(owner) if owner == ask.claim_id => {}
                    _ => return Verdict::Replay,
                }
            }
            let current = rewards.get(ask.reward_id).filter(|r| {
                r.event_id == ask.event_id
                    && r.reward_version == ask.reward_version
                    && r.event_version == ask.event_version
            });
            let Some(reward) = current else { return Verdict::Stale };
            let slots = held.entry((ask.user_id, ask.reward_id)).or_default();
            let Some(slot) = lowest_free_slot(slots, reward.per_user_limit) else {
                return Verdict::Duplicate { limit: reward.per_user_limit };
            };
            if !ask.condition_met {
                return Verdict::ConditionNotMet;
            }
            let stock = remaining.get_mut(reward.id.as_str()).expect("every locked reward has its stock");
            match stock {
                Some(0) => return Verdict::OutOfStock,
                Some(n) => *n -= 1,
                None => {}
            }
            slots.push(slot);
            Verdict::Granted { slot }
        })
        .collect();

    let mut taken = Vec::new();
    let mut left = Vec::new();
    for reward in &snapshot.rewards {
        if let (Some(before), Some(Some(after))) = (reward.remaining, remaining.get(reward.id.as_str())) {
            if before != *after {
                taken.push((reward.id.clone(), before - after));
            }
            left.push((reward.id.clone(), *after, reward.reward_version));
        }
    }
    taken.sort();
    Decided { verdicts, taken, left }
}

/// The lowest slot in `1..=limit` no live claim holds, when the player holds
/// fewer than `limit` (a lowered limit leaves some players above it).
fn lowest_free_slot(held: &[i64], limit: i64) -> Option<i64> {
    if held.len() as i64 >= limit {
        return None;
    }
    (1..=limit).find(|s| !held.contains(s))
}

/// Steps 1 and 2, from the claim path's memory of the catalog: the target
/// when the reward is one of the event's and the event is open at `now`.
pub fn admit(target: Option<&Target>, event_id: &str, now: i64) -> Result<(), Problem> {
    let target = target.filter(|t| t.event.id == event_id).ok_or_else(not_found)?;
    if !target.open_at(now) {
        return Err(not_active());
    }
    Ok(())
}

/// Rewards whose committed stock is known to be zero, each at the version it
/// was seen at: a claim checked against that version is refused at once. A
/// restock, a returned unit or any edit bumps the version, and the claim path
/// sees the new one at once here and within `claim_cache_ms` elsewhere.
#[derive(Debug, Default)]
pub struct SoldOut(RwLock<HashMap<String, i64>>);

/// Most sold-out rewards remembered; past it the memory starts over.
const MAX_SOLD_OUT: usize = 100_000;

impl SoldOut {
    pub fn is_sold_out(&self, reward_id: &str, version: i64) -> bool {
        self.0.read().expect("sold out").get(reward_id) == Some(&version)
    }

    /// What a batch learned: each limited reward's stock after it, at a version.
    pub fn learn(&self, left: &[(String, i64, i64)]) {
        if left.is_empty() {
            return;
        }
        let mut known = self.0.write().expect("sold out");
        for (reward, remaining, version) in left {
            if *remaining == 0 {
                if known.len() >= MAX_SOLD_OUT {
                    known.clear();
                }
                known.insert(reward.clone(), *version);
            } else {
                known.remove(reward);
            }
        }
    }

    pub fn forget(&self, reward_id: &str) {
        self.0.write().expect("sold out").remove(reward_id);
    }
}

pub fn not_found() -> Problem {
    Problem::not_found("no such event, or the reward is not one of its rewards")
}

pub fn not_active() -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, ProblemCode::EventNotActive, "the event is not open for claims now")
}

pub fn duplicate(limit: i64) -> Problem {
    Problem::conflict(
        ProblemCode::DuplicateClaim,
        format!("you already hold {limit} claim(s) of this reward, the most allowed"),
    )
}

/// `unmet`: what is missing, as the evaluator says it.
pub fn condition_not_met(unmet: &str) -> Problem {
    let mut problem =
        Problem::new(StatusCode::BAD_REQUEST, ProblemCode::ConditionNotMet, format!("condition not met: {unmet}"));
    problem.errors = vec![FieldError::new("condition", unmet)];
    problem
}

pub fn out_of_stock() -> Problem {
    Problem::conflict(ProblemCode::OutOfStock, "this reward has no grants left")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reward(id: &str, remaining: Option<i64>, limit: i64) -> RewardState {
        RewardState {
            id: id.into(),
            event_id: "e".into(),
            remaining,
            per_user_limit: limit,
            reward_version: 1,
            event_version: 1,
        }
    }

    struct Owned {
        claim_id: String,
        user_id: String,
        reward_id: String,
        event_id: String,
        reward_version: i64,
        event_version: i64,
        condition_met: bool,
        key: Option<String>,
    }

    fn owned(n: usize, user: &str, reward: &str) -> Owned {
        Owned {
            claim_id: format!("c{n}"),
            user_id: user.into(),
            reward_id: reward.into(),
            event_id: "e".into(),
            reward_version: 1,
            event_version: 1,
            condition_met: true,
            key: None,
        }
    }

    fn asks(owned: &[Owned]) -> Vec<Ask<'_>> {
        owned
            .iter()
            .map(|o| Ask {
                claim_id: &o.claim_id,
                user_id: &o.user_id,
                event_id: &o.event_id,
                reward_id: &o.reward_id,
                reward_version: o.reward_version,
                event_version: o.event_version,
                condition_met: o.condition_met,
                key: o.key.as_deref(),
            })
            .collect()
    }

    #[test]
    fn a_batch_is_decided_in_the_contracts_order_and_in_order_of_arrival() {
        let snapshot = Snapshot {
            rewards: vec![reward("stocked", Some(2), 2), reward("free", None, 1)],
            slots: vec![HeldSlot { user_id: "ann".into(), reward_id: "stocked".into(), slot: 1 }],
            keys: vec![],
        };
        let grants = [
            owned(0, "ann", "stocked"),
            owned(1, "ann", "stocked"),
            owned(2, "bob", "stocked"),
            owned(3, "cat", "stocked"),
            owned(4, "bob", "free"),
            owned(5, "bob", "free"),
            Owned { event_id: "other".into(), ..owned(6, "bob", "free") },
            Owned { reward_version: 0, ..owned(7, "dan", "free") },
            Owned { event_version: 2, ..owned(8, "dan", "free") },
            owned(9, "dan", "gone"),
            Owned { condition_met: false, ..owned(10, "eve", "free") },
            Owned { condition_met: false, ..owned(11, "bob", "free") },
        ];
        let decided = decide(&asks(&grants), &snapshot);
        use Verdict::*;
        assert_eq!(
            decided.verdicts,
            [
                Granted { slot: 2 },
                Duplicate { limit: 2 },
                Granted { slot: 1 },
                OutOfStock,
                Granted { slot: 1 },
                Duplicate { limit: 1 },
                Stale,
                Stale,
                Stale,
                Stale,
                ConditionNotMet,
                Duplicate { limit: 1 },
            ]
        );
        assert_eq!(decided.taken, [("stocked".to_owned(), 2)]);
        assert_eq!(decided.left, [("stocked".to_owned(), 0, 1)]);
    }

    #[test]
    fn a_slot_freed_below_the_highest_is_handed_out_first_and_a_lowered_limit_holds() {
        assert_eq!(lowest_free_slot(&[1, 3], 4), Some(2));
        assert_eq!(lowest_free_slot(&[1, 2, 3], 4), Some(4));
        assert_eq!(lowest_free_slot(&[2], 1), None, "one live claim, limit lowered to one");
        assert_eq!(lowest_free_slot(&[], 1), Some(1));
    }

    #[test]
    fn a_key_is_used_once_and_only_by_its_own_claim() {
        let snapshot = Snapshot {
            rewards: vec![reward("r", None, 5)],
            slots: vec![],
            keys: vec![
                KeyState { user_id: "ann".into(), key: "k".into(), claim_id: Some("c0".into()), answered: false },
                KeyState { user_id: "bob".into(), key: "k".into(), claim_id: Some("c3".into()), answered: true },
            ],
        };
        let grants = [
            Owned { key: Some("k".into()), ..owned(0, "ann", "r") },
            Owned { key: Some("k".into()), claim_id: "c0".into(), ..owned(1, "ann", "r") },
            Owned { key: Some("k".into()), ..owned(2, "cat", "r") },
            Owned { key: Some("k".into()), ..owned(3, "bob", "r") },
        ];
        let decided = decide(&asks(&grants), &snapshot);
        use Verdict::*;
        assert_eq!(decided.verdicts, [Granted { slot: 1 }, Replay, Replay, Replay]);
    }

    /// The rule as a reader would state it, one claim at a time.
    fn reference(asks: &[Ask<'_>], snapshot: &Snapshot) -> Vec<Verdict> {
        let mut remaining: HashMap<String, Option<i64>> =
            snapshot.rewards.iter().map(|r| (r.id.clone(), r.remaining)).collect();
        let mut slots: Vec<HeldSlot> = snapshot.slots.clone();
        let mut keys = snapshot.keys.clone();
        let mut out = Vec::new();
        for ask in asks {
            if let Some(key) = ask.key {
                let usable = keys.iter_mut().find(|k| {
                    k.user_id == ask.user_id
                        && k.key == key
                        && !k.answered
                        && k.claim_id.as_deref() == Some(ask.claim_id)
                });
                match usable {
                    Some(k) => k.answered = true,
                    None => {
                        out.push(Verdict::Replay);
                        continue;
                    }
                }
            }
            let Some(reward) = snapshot.rewards.iter().find(|r| {
                r.id == ask.reward_id
                    && r.event_id == ask.event_id
                    && r.reward_version == ask.reward_version
                    && r.event_version == ask.event_version
            }) else {
                out.push(Verdict::Stale);
                continue;
            };
            let mine: Vec<i64> = slots
                .iter()
                .filter(|s| s.user_id == ask.user_id && s.reward_id == ask.reward_id)
                .map(|s| s.slot)
                .collect();
            if mine.len() as i64 >= reward.per_user_limit {
                out.push(Verdict::Duplicate { limit: reward.per_user_limit });
                continue;
            }
            if !ask.condition_met {
                out.push(Verdict::ConditionNotMet);
                continue;
            }
            let stock = remaining.get_mut(&reward.id).unwrap();
            if *stock == Some(0) {
                out.push(Verdict::OutOfStock);
                continue;
            }
            if let Some(n) = stock {
                *n -= 1;
            }
            let slot = (1..).find(|s| !mine.contains(s)).unwrap();
            slots.push(HeldSlot { user_id: ask.user_id.into(), reward_id: ask.reward_id.into(), slot });
            out.push(Verdict::Granted { slot });
        }
        out
    }

    proptest! {
        #[test]
        fn the_decider_agrees_with_the_rule_stated_one_claim_at_a_time(
            limits in proptest::collection::vec((1i64..4, proptest::option::of(0i64..4)), 1..4),
            held in proptest::collection::vec((0usize..4, 0usize..4, 1i64..5), 0..8),
            claims in proptest::collection::vec((0usize..4, 0usize..5, any::<bool>(), 0u8..10, proptest::option::of(0u8..3)), 0..24),
        ) {
            let rewards: Vec<RewardState> = limits.iter().enumerate()
                .map(|(i, (limit, stock))| reward(&format!("r{i}"), *stock, *limit)).collect();
            let mut slots: Vec<HeldSlot> = Vec::new();
            for (user, r, slot) in held {
                let s = HeldSlot { user_id: format!("u{user}"), reward_id: format!("r{}", r % rewards.len()), slot };
                if !slots.contains(&s) { slots.push(s); }
            }
            let keys: Vec<KeyState> = (0..4).flat_map(|u| (0..3).map(move |k| KeyState {
                user_id: format!("u{u}"), key: format!("k{k}"), claim_id: Some(format!("key-{u}-{k}")), answered: k == 2,
            })).collect();
            let owned: Vec<Owned> = claims.iter().enumerate().map(|(n, (user, r, met, odd, key))| {
                let mut o = owned(n, &format!("u{user}"), &format!("r{r}"));
                o.condition_met = *met;
                if *odd == 0 { o.reward_version = 0; }
                if *odd == 1 { o.event_version = 7; }
                if let Some(k) = key {
                    o.key = Some(format!("k{k}"));
                    o.claim_id = format!("key-{user}-{k}");
                }
                o
            }).collect();
            let snapshot = Snapshot { rewards, slots, keys };
            let asks = asks(&owned);
            let decided = decide(&asks, &snapshot);
            prop_assert_eq!(&decided.verdicts, &reference(&asks, &snapshot));
            for (reward, n) in &decided.taken {
                let granted = decided.verdicts.iter().zip(&asks)
                    .filter(|(v, a)| matches!(v, Verdict::Granted { .. }) && a.reward_id == reward).count();
                prop_assert_eq!(*n, granted as i64);
            }
        }
    }
}
