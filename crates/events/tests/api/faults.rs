//! Faults at a grant batch's commit, and what the clients are told.
//!
//! On PostgreSQL a [`FaultProxy`] sits between the service and the database
//! and breaks the connection of the next `COMMIT`: after it reached the
//! server (the batch committed, its reply is lost) or before (the server
//! rolls back). On SQLite the grant writers' own hook loses the next commit's
//! reply. Either way every client must be told what the store holds: a 201
//! for a claim that exists, nothing granted for any other answer, and each
//! idempotency key's replay the same answer.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use rewards_events::EventsSettings;
use rewards_kit::identity::{Identity, Role};
use rewards_kit::store::StoreKind;
use rewards_kit::store_tests;
use rewards_kit::testing::{FaultProxy, TestStore, upstream_of};
use serde_json::{Value, json};

use crate::support::*;

const STOCK: i64 = 100;
const PLAYERS: usize = 40;

store_tests!(
    a_lost_commit_reply_leaves_every_key_its_grant,
    a_lost_commit_reply_is_resolved_by_looking_not_by_deciding_again,
    a_lost_commit_reply_keeps_a_players_limit,
);

/// The service under test, with a way to break its next commit.
struct Faulty {
    events: TestEvents,
    /// In front of PostgreSQL; `None` on SQLite (the writers' hook instead).
    proxy: Option<FaultProxy>,
}

impl Faulty {
    /// On PostgreSQL, the service reaches its store through a proxy only.
    async fn start(store: TestStore) -> Self {
        match store.kind {
            StoreKind::Postgres => {
                let proxy = FaultProxy::start(upstream_of(&store.url).await).await;
                let url = proxy.route(&store.url);
                assert_ne!(url, store.url);
                let events = TestEvents::start_at(store, &url, EventsSettings::default()).await;
                Self { events, proxy: Some(proxy) }
            }
            StoreKind::Sqlite => Self { events: TestEvents::start(store).await, proxy: None },
        }
    }

    fn lose_next_commit_reply(&self) {
        match &self.proxy {
            Some(proxy) => proxy.lose_next_commit_reply(),
            None => self.events.state.committer.faults().lose_next_commit_reply(),
        }
    }

    /// That the armed faults fired, `n` in all (only the proxy counts them).
    fn assert_fired(&self, n: usize) {
        if let Some(proxy) = &self.proxy {
            assert_eq!(proxy.fired(), n, "the proxy's faults fired");
        }
    }
}

/// An active event (no condition) and a reward of `STOCK` units.
async fn setup(events: &TestEvents, reward: Value) -> (String, String) {
    let mut event = weekly("faulty");
    event["condition"] = json!({ "type": "none" });
    let event = events.event(event).await["id"].as_str().unwrap().to_owned();
    let mut body = json!({ "name": "Points", "type": "POINT", "details": {}, "quantity": 10, "stock": STOCK });
    for (k, v) in reward.as_object().unwrap() {
        body[k] = v.clone();
    }
    body["eventId"] = json!(event);
    let reward = events.reward(body).await["id"].as_str().unwrap().to_owned();
    (event, reward)
}

fn players() -> Vec<Identity> {
    (0..PLAYERS).map(|i| who(&format!("p{i}"), &[Role::User])).collect()
}

/// One answer: status, `Retry-After`, body.
type Reply = (StatusCode, Option<String>, Value);

/// Like `all_at_once`, keeping each answer's `Retry-After`.
async fn at_once(n: usize, make: impl Fn(usize) -> reqwest::RequestBuilder) -> Vec<Reply> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, request) = (barrier.clone(), make(i));
            tokio::spawn(async move {
                barrier.wait().await;
                reply(request.send().await.expect("the request reaches the server")).await
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

fn claim_request(
    events: &TestEvents,
    who: &Identity,
    key: Option<&str>,
    event: &str,
    reward: &str,
) -> reqwest::RequestBuilder {
    let request = events.call(Method::POST, "/reward-claims", Some(who));
    let request = match key {
        Some(key) => request.header("Idempotency-Key", key),
        None => request,
    };
    request.json(&json!({ "eventId": event, "rewardId": reward }))
}

/// The live claims of `reward` in the store: (id, user, status).
async fn stored_claims(events: &TestEvents, reward: &str) -> Vec<(String, String, String)> {
    rewards_kit::with_pool!(events.state.store(), |pool| {
        sqlx::query_as("SELECT id, user_id, status FROM reward_claims WHERE reward_id = $1 AND slot IS NOT NULL")
            .bind(reward)
            .fetch_all(pool)
            .await
            .unwrap()
    })
}

async fn remaining(events: &TestEvents, reward: &str) -> i64 {
    let path = format!("/rewards/{reward}");
    let now: Value = events.send(Method::GET, &path, Some(&operator()), None).await.json().await.unwrap();
    now["remaining"].as_i64().unwrap()
}

fn ids(replies: &[Reply]) -> BTreeSet<String> {
    replies
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .map(|(_, _, b)| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The store holds exactly `granted` as `reward`'s live claims, all PAID,
/// and its stock is down by as many.
async fn assert_store_holds(events: &TestEvents, reward: &str, granted: &BTreeSet<String>) {
    let stored = stored_claims(events, reward).await;
    let stored_ids: BTreeSet<String> = stored.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(stored.len(), stored_ids.len());
    assert_eq!(&stored_ids, granted, "the store holds exactly the claims its clients were granted");
    assert!(stored.iter().all(|(_, _, status)| status == "PAID"), "{stored:?}");
    assert_eq!(remaining(events, reward).await, STOCK - granted.len() as i64, "one unit per grant");
}

/// Each key, sent again, gets the answer its first request got. Check the
/// store before: the replay of a key left open goes on and writes its claim.
async fn assert_replays(
    events: &TestEvents,
    requests: &[(Identity, String)],
    first: &[Reply],
    event: &str,
    reward: &str,
) {
    for ((who, key), (status, _, body)) in requests.iter().zip(first) {
        let again = claim_request(events, who, Some(key), event, reward).send().await.unwrap();
        let (again_status, _, again_body) = reply(again).await;
        assert_eq!(again_status, *status, "the replay of {key}: {again_body}");
        if *status == StatusCode::CREATED {
            assert_eq!(again_body["id"], body["id"], "the replay of {key} names the same claim");
        } else {
            assert_eq!(again_body["code"], body["code"], "the replay of {key}");
        }
    }
}

/// Forty players claim at once, each with its own key, and the reply of
/// the (first) batch's commit is lost: the batch committed, so each is told
/// 201, once, and its key replays that claim.
async fn a_lost_commit_reply_leaves_every_key_its_grant(store: TestStore) {
    let faulty = Faulty::start(store).await;
    let events = &faulty.events;
    let (event, reward) = setup(events, json!({})).await;
    let requests: Vec<(Identity, String)> =
        players().into_iter().enumerate().map(|(i, p)| (p, format!("lost-reply-{i}"))).collect();

    faulty.lose_next_commit_reply();
    let replies =
        at_once(PLAYERS, |i| claim_request(events, &requests[i].0, Some(&requests[i].1), &event, &reward)).await;
    faulty.assert_fired(1);

    let statuses: Vec<StatusCode> = replies.iter().map(|(s, _, _)| *s).collect();
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED), "{replies:?}");
    let granted = ids(&replies);
    assert_eq!(granted.len(), PLAYERS, "forty distinct claims");
    assert_store_holds(events, &reward, &granted).await;
    assert_replays(events, &requests, &replies, &event, &reward).await;
    assert_store_holds(events, &reward, &granted).await;
    faulty.assert_fired(1);
}

/// The same without keys: nothing but the writer's look at the store tells
/// it that the batch committed. Deciding the batch again would find every
/// player holding its one claim and tell each DUPLICATE_CLAIM.
async fn a_lost_commit_reply_is_resolved_by_looking_not_by_deciding_again(store: TestStore) {
    let faulty = Faulty::start(store).await;
    let events = &faulty.events;
    let (event, reward) = setup(events, json!({})).await;
    let players = players();

    faulty.lose_next_commit_reply();
    let replies = at_once(PLAYERS, |i| claim_request(events, &players[i], None, &event, &reward)).await;
    faulty.assert_fired(1);

    assert!(replies.iter().all(|(s, _, _)| *s == StatusCode::CREATED), "{replies:?}");
    let granted = ids(&replies);
    assert_eq!(granted.len(), PLAYERS);
    assert_store_holds(events, &reward, &granted).await;
    // Each player's answer is its own claim.
    let stored = stored_claims(events, &reward).await;
    for (_, _, body) in &replies {
        let row = stored.iter().find(|(id, _, _)| body["id"] == *id).expect("the claim is stored");
        assert_eq!(body["userId"], row.1);
    }
}

/// One player (limit 3) claims ten times at once with ten keys, and the
/// commit's reply is lost: exactly three grants, seven DUPLICATE_CLAIM,
/// nothing else — and every key replays its answer.
async fn a_lost_commit_reply_keeps_a_players_limit(store: TestStore) {
    let faulty = Faulty::start(store).await;
    let events = &faulty.events;
    let (event, reward) = setup(events, json!({ "perUserLimit": 3 })).await;
    let pat = player();
    let requests: Vec<(Identity, String)> = (0..10).map(|i| (pat.clone(), format!("limit-{i}"))).collect();

    faulty.lose_next_commit_reply();
    let replies = at_once(10, |i| claim_request(events, &requests[i].0, Some(&requests[i].1), &event, &reward)).await;
    faulty.assert_fired(1);

    let created = replies.iter().filter(|(s, _, _)| *s == StatusCode::CREATED).count();
    let duplicate =
        replies.iter().filter(|(s, _, b)| *s == StatusCode::CONFLICT && b["code"] == "DUPLICATE_CLAIM").count();
    assert_eq!((created, duplicate), (3, 7), "no 5xx, nothing else: {replies:?}");
    let granted = ids(&replies);
    assert_eq!(granted.len(), 3);
    assert_store_holds(events, &reward, &granted).await;
    assert_replays(events, &requests, &replies, &event, &reward).await;
    assert_store_holds(events, &reward, &granted).await;
}

/// The connection is cut before the batch's COMMIT reaches PostgreSQL, which
/// rolls the batch back. The writer cannot tell that from a lost reply: it
/// looks for the batch's first claim, finds none, and writes the batch again
/// (once) on a new connection — so every player is granted, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_before_postgres_saw_it_is_written_again() {
    let Some(store) = TestStore::postgres().await else { return };
    let faulty = Faulty::start(store).await;
    let (events, proxy) = (&faulty.events, faulty.proxy.as_ref().expect("a proxy"));
    let (event, reward) = setup(events, json!({})).await;
    let requests: Vec<(Identity, String)> =
        players().into_iter().enumerate().map(|(i, p)| (p, format!("cut-once-{i}"))).collect();

    proxy.drop_before_next_commit();
    let replies =
        at_once(PLAYERS, |i| claim_request(events, &requests[i].0, Some(&requests[i].1), &event, &reward)).await;
    assert_eq!(proxy.fired(), 1);

    assert!(replies.iter().all(|(s, _, _)| *s == StatusCode::CREATED), "{replies:?}");
    let granted = ids(&replies);
    assert_eq!(granted.len(), PLAYERS);
    assert_store_holds(events, &reward, &granted).await;
    assert_replays(events, &requests, &replies, &event, &reward).await;
    assert_store_holds(events, &reward, &granted).await;
}

/// The batch's COMMIT is cut before PostgreSQL sees it, and so is the commit
/// of its one retry: the batch provably wrote nothing, its players are told
/// 503 (with Retry-After) and their keys are released — a retry with the
/// same key is granted once, and replays after that. Later batches, if the
/// forty came in several, are granted; either way a 201 is a stored claim
/// and a 503 is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_commit_is_cut_twice_fails_and_frees_its_keys() {
    let Some(store) = TestStore::postgres().await else { return };
    let faulty = Faulty::start(store).await;
    let (events, proxy) = (&faulty.events, faulty.proxy.as_ref().expect("a proxy"));
    let (event, reward) = setup(events, json!({})).await;
    let requests: Vec<(Identity, String)> =
        players().into_iter().enumerate().map(|(i, p)| (p, format!("cut-twice-{i}"))).collect();

    proxy.drop_before_next_commit();
    proxy.drop_before_next_commit();
    let replies =
        at_once(PLAYERS, |i| claim_request(events, &requests[i].0, Some(&requests[i].1), &event, &reward)).await;
    assert_eq!(proxy.fired(), 2, "the batch and its retry");

    let unavailable: Vec<usize> = (0..PLAYERS).filter(|&i| replies[i].0 == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert!(!unavailable.is_empty(), "the first batch failed: {replies:?}");
    for (status, retry_after, body) in &replies {
        match *status {
            StatusCode::CREATED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
            }
            other => panic!("neither granted nor unavailable: {other} {body}"),
        }
    }
    let granted = ids(&replies);
    assert_eq!(granted.len() + unavailable.len(), PLAYERS);
    assert_store_holds(events, &reward, &granted).await;
    let stored = stored_claims(events, &reward).await;
    for &i in &unavailable {
        let user = &requests[i].0.sub;
        assert!(stored.iter().all(|(_, u, _)| u != user), "{user} was told 503 and holds nothing");
    }

    // The keys of the 503s were released (a key left open would let its
    // retry through too, so the store is asked): a retry is granted, once.
    let mut all = granted.clone();
    for &i in &unavailable {
        let (who, key) = &requests[i];
        let kept: i64 = rewards_kit::with_pool!(events.state.store(), |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys WHERE user_id = $1 AND key = $2")
                .bind(&who.sub)
                .bind(key)
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!(kept, 0, "the key {key} of a 503 was released");
        let retried = reply(claim_request(events, who, Some(key), &event, &reward).send().await.unwrap()).await;
        assert_eq!(retried.0, StatusCode::CREATED, "the retry of {key}: {:?}", retried.2);
        let again = reply(claim_request(events, who, Some(key), &event, &reward).send().await.unwrap()).await;
        assert_eq!((again.0, &again.2["id"]), (StatusCode::CREATED, &retried.2["id"]), "the replay of {key}");
        all.insert(retried.2["id"].as_str().unwrap().to_owned());
    }
    // The keys of the 201s replay their claims.
    let (first_granted, first_replies): (Vec<_>, Vec<_>) = requests
        .iter()
        .cloned()
        .zip(replies.iter().cloned())
        .filter(|(_, (s, _, _))| *s == StatusCode::CREATED)
        .unzip();
    assert_replays(events, &first_granted, &first_replies, &event, &reward).await;
    assert_eq!(all.len(), PLAYERS);
    assert_store_holds(events, &reward, &all).await;
    assert_eq!(proxy.fired(), 2);
}
