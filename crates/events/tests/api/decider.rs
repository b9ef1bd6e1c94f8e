//! The grant batch on both stores: random batches (players, per-user limits,
//! stock, slots freed below the highest, stale versions, unmet conditions,
//! idempotency keys) written to SQLite and to PostgreSQL give the same
//! verdicts and leave the same rows — and the verdicts are the rule's.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use rewards_events::commit::{Faults, Grant, Link, write_batch};
use rewards_events::domain::ClaimStatus;
use rewards_events::rule::Verdict;
use rewards_kit::store::Store;
use rewards_kit::testing::TestStore;
use rewards_kit::with_pool;

#[derive(Debug, Clone)]
struct Scenario {
    /// Per reward: (perUserLimit, stock).
    rewards: Vec<(i64, Option<i64>)>,
    /// Live claims already held: (player, reward, slot).
    held: Vec<(usize, usize, i64)>,
    /// The batch: (player, reward — one past the last is a reward that does
    /// not exist, stale version?, condition met?, key?).
    grants: Vec<(usize, usize, bool, bool, Option<usize>)>,
    /// Which keys (player, key) were answered before the batch.
    answered: Vec<(usize, usize)>,
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    (1usize..4)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec((1i64..4, proptest::option::of(0i64..5)), n),
                proptest::collection::vec((0usize..4, 0..n, 1i64..5), 0..10),
                proptest::collection::vec(
                    (
                        0usize..5,
                        0..=n,
                        proptest::bool::weighted(0.1),
                        proptest::bool::weighted(0.8),
                        proptest::option::weighted(0.4, 0usize..2),
                    ),
                    1..24,
                ),
                proptest::collection::vec((0usize..5, 0usize..2), 0..3),
            )
        })
        .prop_map(|(rewards, held, grants, answered)| Scenario { rewards, held, grants, answered })
}

/// A claim as compared: id, player, reward, slot, status, reason.
type ClaimRow = (String, String, String, Option<i64>, String, Option<String>);

/// What a store holds after the batch, in a comparable order.
#[derive(Debug, PartialEq, Eq)]
struct State {
    claims: Vec<ClaimRow>,
    remaining: Vec<(String, Option<i64>)>,
    keys: Vec<(String, String, Option<i64>)>,
}

const EVENT: &str = "event-1";

async fn prepare(store: &Store, scenario: &Scenario) {
    let event = "INSERT INTO events (id, name, description, condition, start_at, end_at, time_zone, status, \
                 created_by, created_at, updated_at) VALUES ($1, 'e', '', '{\"type\":\"none\"}', 0, 10, 'UTC', 'ACTIVE', \
                 'op', 0, 0)";
    let reward = "INSERT INTO rewards (id, event_id, name, type, details, quantity, stock, remaining, per_user_limit, \
                  requires_approval, created_by, created_at, updated_at, version) \
                  VALUES ($1, $2, 'r', 'POINT', '{}', 1, $3, $3, $4, false, 'op', 0, 0, 1)";
    let claim = "INSERT INTO reward_claims (id, user_id, event_id, reward_id, slot, status, reason, reward, \
                 created_at, processed_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'PAID', NULL, '{}', 1, 1, 1)";
    let key = "INSERT INTO idempotency_keys (user_id, key, request_hash, claim_id, response_status, response_body, \
               created_at, expires_at) VALUES ($1, $2, 'h', $3, $4, $5, 0, 1000000000)";
    with_pool!(store, |pool| {
        sqlx::query(event).bind(EVENT).execute(pool).await.unwrap();
        for (i, (limit, stock)) in scenario.rewards.iter().enumerate() {
            sqlx::query(reward)
                .bind(format!("r{i}"))
                .bind(EVENT)
                .bind(*stock)
                .bind(*limit)
                .execute(pool)
                .await
                .unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for (n, (user, reward, slot)) in scenario.held.iter().enumerate() {
            if !seen.insert((user, reward, slot)) {
                continue;
            }
            sqlx::query(claim)
                .bind(format!("held-{n}"))
                .bind(format!("u{user}"))
                .bind(EVENT)
                .bind(format!("r{reward}"))
                .bind(*slot)
                .execute(pool)
                .await
                .unwrap();
        }
        for user in 0..5 {
            for k in 0..2 {
                let answered = scenario.answered.contains(&(user, k));
                sqlx::query(key)
                    .bind(format!("u{user}"))
                    .bind(format!("k{k}"))
                    .bind(format!("key-claim-{user}-{k}"))
                    .bind(answered.then_some(409i64))
                    .bind(answered.then_some("{}"))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    });
}

fn grants(scenario: &Scenario) -> Vec<Grant> {
    scenario
        .grants
        .iter()
        .enumerate()
        .map(|(n, (user, reward, stale, met, key))| Grant {
            claim_id: match key {
                Some(k) => format!("key-claim-{user}-{k}"),
                None => format!("claim-{n}"),
            },
            user_id: format!("u{user}"),
            event_id: EVENT.to_owned(),
            reward_id: format!("r{reward}"),
            at: 100 + n as i64,
            status: ClaimStatus::Paid,
            reward: "{}".to_owned(),
            reward_version: if *stale { 0 } else { 1 },
            event_version: 0,
            unmet: (!met).then(|| "0 of 1 login days".to_owned()),
            key: key.map(|k| format!("k{k}")),
            body: format!("{{\"n\":{n}}}"),
        })
        .collect()
}

async fn state_of(store: &Store) -> State {
    let claims =
        "SELECT id, user_id, reward_id, slot, status, reason FROM reward_claims ORDER BY user_id, reward_id, id";
    let remaining = "SELECT id, remaining FROM rewards ORDER BY id";
    let keys = "SELECT user_id, key, response_status FROM idempotency_keys ORDER BY user_id, key";
    with_pool!(store, |pool| {
        let mut claims: Vec<ClaimRow> = sqlx::query_as(claims).fetch_all(pool).await.unwrap();
        // Refusal records get a fresh id on each store; compare them by what they say.
        for claim in &mut claims {
            if claim.0.len() == 36 {
                claim.0 = "refusal".to_owned();
            }
        }
        claims.sort();
        State {
            claims,
            remaining: sqlx::query_as(remaining).fetch_all(pool).await.unwrap(),
            keys: sqlx::query_as(keys).fetch_all(pool).await.unwrap(),
        }
    })
}

async fn run_on(kind: rewards_kit::store::StoreKind, scenario: &Scenario) -> Option<(Vec<Verdict>, State)> {
    let test_store = TestStore::of(kind).await?;
    let settings = rewards_events::EventsSettings::default();
    let clock = rewards_kit::clock::SharedClock::new(rewards_kit::clock::SystemClock);
    let state = rewards_events::open(&settings, &test_store.url, clock).await.unwrap();
    let store = state.store().clone();
    prepare(&store, scenario).await;
    let grants = grants(scenario);
    let decided = write_batch(&mut Link::to(&store), &grants, &Faults::default()).await.expect("the batch commits");
    let after = state_of(&store).await;
    store.close().await;
    Some((decided.verdicts, after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_batches_leave_the_same_verdicts_and_rows_on_both_stores() {
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    let strategy = scenarios();
    for _ in 0..24 {
        let scenario = strategy.new_tree(&mut runner).expect("a scenario").current();
        let (verdicts, sqlite) =
            run_on(rewards_kit::store::StoreKind::Sqlite, &scenario).await.expect("SQLite is always there");
        // Granted claims and the stock they took agree with the verdicts.
        let granted = verdicts.iter().filter(|v| matches!(v, Verdict::Granted { .. })).count();
        let new_claims = sqlite.claims.iter().filter(|c| !c.0.starts_with("held-") && c.3.is_some()).count();
        assert_eq!(granted, new_claims, "{scenario:?}");
        let Some((pg_verdicts, postgres)) = run_on(rewards_kit::store::StoreKind::Postgres, &scenario).await else {
            continue;
        };
        assert_eq!(verdicts, pg_verdicts, "{scenario:?}");
        assert_eq!(sqlite, postgres, "{scenario:?}");
    }
}
