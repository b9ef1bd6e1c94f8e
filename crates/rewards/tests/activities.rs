//! Conditions checked against real facts: the auth service reports LOGIN and
//! SIGNUP through its outbox, operators report quests and levels, and the
//! events service evaluates progress — over real HTTP, on both stores.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use rewards_auth::AuthSettings;
use rewards_events::EventsSettings;
use rewards_kit::clock::{ManualClock, SharedClock};
use rewards_kit::identity::{IDENTITY_HEADER, Identity, IdentityKey, Role};
use rewards_kit::server::Shutdown;
use rewards_kit::store_tests;
use rewards_kit::testing::{TestServer, TestStore};
use serde_json::{Value, json};

store_tests!(
    logins_on_three_days_meet_login_days_and_a_gap_breaks_the_streak,
    two_signups_naming_a_referrer_meet_invite_friends_two,
    quests_and_levels_reported_by_an_operator_meet_their_conditions_and_replays_change_nothing,
    logins_while_the_events_service_is_down_arrive_exactly_once,
);

struct Platform {
    clock: ManualClock,
    key: IdentityKey,
    auth: rewards_auth::AppState,
    auth_server: TestServer,
    events_url: String,
    events_addr: SocketAddr,
    events_store: TestStore,
    events: Option<(rewards_events::AppState, TestServer)>,
    dispatcher: Shutdown,
    _auth_store: TestStore,
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn operator() -> Identity {
    Identity { sub: "op-1".into(), username: "olivia".into(), roles: vec![Role::Operator] }
}

impl Platform {
    async fn start(auth_store: TestStore) -> Self {
        let events_store = TestStore::of(auth_store.kind).await.expect("a second store of the same kind");
        // 2026-12-01 10:00 in Seoul.
        let clock = ManualClock::new(at("2026-12-01T01:00:00Z"));
        let key = IdentityKey::generate();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let events_addr = listener.local_addr().unwrap();
        let events_url = format!("http://{events_addr}");
        let events = Self::events_on(&events_store, &clock, &key, listener).await;

        let settings = AuthSettings { events_url: events_url.clone(), ..AuthSettings::for_tests() };
        let auth = rewards_auth::open(&settings, &auth_store.url, SharedClock::new(clock.clone())).await.unwrap();
        let auth_server = TestServer::spawn(rewards_auth::router(auth.clone(), key.clone())).await;
        let dispatcher = Shutdown::new();
        let outbox =
            rewards_auth::outbox::Dispatcher::new(auth.db.clone(), key.clone(), &events_url, Duration::from_millis(20));
        tokio::spawn(outbox.run(dispatcher.clone()));
        Self {
            clock,
            key,
            auth,
            auth_server,
            events_url,
            events_addr,
            events_store,
            events: Some(events),
            dispatcher,
            _auth_store: auth_store,
        }
    }

    async fn events_on(
        store: &TestStore,
        clock: &ManualClock,
        key: &IdentityKey,
        listener: tokio::net::TcpListener,
    ) -> (rewards_events::AppState, TestServer) {
        let state = rewards_events::open(&EventsSettings::default(), &store.url, SharedClock::new(clock.clone()))
            .await
            .unwrap();
        let server = TestServer::spawn_on(listener, rewards_events::router(state.clone(), key.clone())).await;
        (state, server)
    }

    async fn stop_events(&mut self) {
        let (state, server) = self.events.take().expect("running");
        server.stop().await;
        state.store().close().await;
    }

    async fn restart_events(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.events_addr).await.unwrap();
        self.events = Some(Self::events_on(&self.events_store, &self.clock, &self.key, listener).await);
    }

    fn events_state(&self) -> &rewards_events::AppState {
        &self.events.as_ref().expect("running").0
    }

    async fn call_events(&self, method: Method, path: &str, who: &Identity, body: Option<Value>) -> reqwest::Response {
        let request = self
            .auth_server
            .client
            .request(method.clone(), format!("{}{path}", self.events_url))
            .header(IDENTITY_HEADER, self.key.sign(&method, path, who));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        request.send().await.unwrap()
    }

    async fn signup(&self, username: &str, referrer: Option<&str>) -> Identity {
        let mut body = json!({ "username": username, "password": "password-123" });
        if let Some(r) = referrer {
            body["referrer"] = json!(r);
        }
        let response =
            self.auth_server.client.post(self.auth_server.url("/auth/signup")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let user: Value = response.json().await.unwrap();
        Identity {
            sub: user["id"].as_str().unwrap().to_owned(),
            username: username.to_owned(),
            roles: vec![Role::User],
        }
    }

    async fn login(&self, username: &str) {
        let response = self
            .auth_server
            .client
            .post(self.auth_server.url("/auth/login"))
            .json(&json!({ "username": username, "password": "password-123" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn event(&self, name: &str, condition: Value) -> String {
        let body = json!({ "name": name, "condition": condition, "startDate": "2026-12-01", "endDate": "2026-12-07", "status": "ACTIVE" });
        let response = self.call_events(Method::POST, "/events", &operator(), Some(body)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the outbox has delivered everything.
    async fn delivered(&self) {
        let started = std::time::Instant::now();
        while self.auth.db.outbox_pending().await.unwrap() > 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "the outbox did not drain");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `name → (met, summary)` of the player's progress.
    async fn progress(&self, who: &Identity) -> std::collections::BTreeMap<String, (bool, String)> {
        let response = self.call_events(Method::GET, "/progress/me", who, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let list: Value = response.json().await.unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let p = &i["progress"];
                (
                    i["name"].as_str().unwrap().to_owned(),
                    (p["met"].as_bool().unwrap(), p["summary"].as_str().unwrap().to_owned()),
                )
            })
            .collect()
    }

    async fn count(&self, user: &str, kind: &str) -> i64 {
        rewards_kit::with_pool!(self.events_state().store(), |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM activities WHERE user_id = $1 AND type = $2")
                .bind(user)
                .bind(kind)
                .fetch_one(pool)
                .await
                .unwrap()
        })
    }

    fn next_day(&self) {
        self.clock.advance(chrono::Duration::days(1));
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.dispatcher.cancel();
    }
}

fn entry(met: bool, summary: &str) -> (bool, String) {
    (met, summary.to_owned())
}

async fn logins_on_three_days_meet_login_days_and_a_gap_breaks_the_streak(store: TestStore) {
    let p = Platform::start(store).await;
    p.event("days", json!({ "type": "loginDays", "days": 3 })).await;
    p.event("streak", json!({ "type": "loginStreak", "days": 3 })).await;
    let steady = p.signup("steady", None).await;
    let gappy = p.signup("gappy", None).await;

    // d1: both sign in (steady twice: still one day).
    p.login("steady").await;
    p.login("steady").await;
    p.login("gappy").await;
    p.next_day();
    // d2: only steady.
    p.login("steady").await;
    p.delivered().await;
    let progress = p.progress(&steady).await;
    assert_eq!(progress["days"], entry(false, "2 of 3 login days"));
    assert_eq!(progress["streak"], entry(false, "2 of 3 consecutive login days"));
    p.next_day();
    // d3: both.
    p.login("steady").await;
    p.login("gappy").await;
    p.next_day();
    // d4: gappy.
    p.login("gappy").await;
    p.delivered().await;

    let progress = p.progress(&steady).await;
    assert_eq!(progress["days"], entry(true, "3 of 3 login days"));
    assert_eq!(progress["streak"], entry(true, "3 of 3 consecutive login days"));
    let progress = p.progress(&gappy).await;
    assert_eq!(progress["days"], entry(true, "3 of 3 login days"));
    assert_eq!(
        progress["streak"],
        entry(false, "2 of 3 consecutive login days"),
        "d1, then d3 and d4: the gap breaks it"
    );
    assert_eq!(p.count(&steady.sub, "LOGIN").await, 4);
    assert_eq!(p.count(&steady.sub, "SIGNUP").await, 1);
}

async fn two_signups_naming_a_referrer_meet_invite_friends_two(store: TestStore) {
    let p = Platform::start(store).await;
    p.event("invite two", json!({ "type": "inviteFriends", "count": 2 })).await;
    let popular = p.signup("popular", None).await;
    let lonely = p.signup("lonely", None).await;
    p.signup("friend_one", Some("popular")).await;
    p.signup("friend_two", Some("POPULAR")).await;
    p.signup("friend_three", Some("lonely")).await;
    p.delivered().await;
    assert_eq!(p.progress(&popular).await["invite two"], entry(true, "2 of 2 friends invited"));
    assert_eq!(p.progress(&lonely).await["invite two"], entry(false, "1 of 2 friends invited"));
}

async fn quests_and_levels_reported_by_an_operator_meet_their_conditions_and_replays_change_nothing(store: TestStore) {
    let p = Platform::start(store).await;
    p.event("quest", json!({ "type": "questClear", "questId": "Q-7" })).await;
    p.event("level 10", json!({ "type": "levelReached", "level": 10 })).await;
    p.event("level 20", json!({ "type": "levelReached", "level": 20 })).await;
    p.event("both", json!({ "type": "all", "conditions": [{ "type": "questClear", "questId": "Q-7" }, { "type": "levelReached", "level": 20 }] })).await;
    p.event(
        "three wins",
        json!({ "type": "activityCount", "activity": "PVP_WIN", "count": 3, "match": { "mode": "ranked" } }),
    )
    .await;
    let hero = p.signup("hero", None).await;

    let batch = json!({ "activities": [
        { "id": "game-1", "userId": hero.sub, "type": "QUEST_CLEAR", "occurredAt": "2026-12-01T00:30:00Z", "attributes": { "questId": "Q-7" } },
        { "id": "game-2", "userId": hero.sub, "type": "LEVEL_UP", "occurredAt": "2026-12-01T00:40:00Z", "attributes": { "level": 12 } },
        { "id": "game-3", "userId": hero.sub, "type": "PVP_WIN", "occurredAt": "2026-12-01T00:41:00Z", "attributes": { "mode": "ranked" } },
        { "id": "game-4", "userId": hero.sub, "type": "PVP_WIN", "occurredAt": "2026-12-01T00:42:00Z", "attributes": { "mode": "casual" } },
        { "id": "game-5", "userId": hero.sub, "type": "PVP_WIN", "occurredAt": "2026-12-01T00:43:00Z", "attributes": { "mode": "ranked" } },
    ]});
    let response = p.call_events(Method::POST, "/activities", &operator(), Some(batch.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "accepted": 5, "duplicates": 0 }));

    let progress = p.progress(&hero).await;
    assert_eq!(progress["quest"], entry(true, "quest Q-7 cleared"));
    assert_eq!(progress["level 10"], entry(true, "level 12 of 10"));
    assert_eq!(progress["level 20"], entry(false, "level 12 of 20"));
    assert_eq!(progress["both"], entry(false, "1 of 2 conditions met"));
    assert_eq!(progress["three wins"], entry(false, "2 of 3 PVP_WIN activities"));

    // The same batch again: nothing changes.
    let replay = p.call_events(Method::POST, "/activities", &operator(), Some(batch)).await;
    assert_eq!(replay.json::<Value>().await.unwrap(), json!({ "accepted": 0, "duplicates": 5 }));
    assert_eq!(p.progress(&hero).await, progress);

    // An id reused with other content refuses the whole batch.
    let forged = json!({ "activities": [
        { "id": "game-6", "userId": hero.sub, "type": "PVP_WIN", "occurredAt": "2026-12-01T00:44:00Z", "attributes": { "mode": "ranked" } },
        { "id": "game-2", "userId": hero.sub, "type": "LEVEL_UP", "occurredAt": "2026-12-01T00:40:00Z", "attributes": { "level": 99 } },
    ]});
    let response = p.call_events(Method::POST, "/activities", &operator(), Some(forged)).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(p.progress(&hero).await, progress, "not even game-6 was recorded");

    // Bad input and the wrong callers.
    let future = json!({ "activities": [{ "id": "x", "userId": hero.sub, "type": "LOGIN", "occurredAt": "2026-12-02T01:00:00Z" }] });
    let response = p.call_events(Method::POST, "/activities", &operator(), Some(future)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "activities[0].occurredAt");
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({ "id": format!("b{i}"), "userId": "u", "type": "LOGIN", "occurredAt": "2026-12-01T00:00:00Z" }))
        .collect();
    let response =
        p.call_events(Method::POST, "/activities", &operator(), Some(json!({ "activities": too_many }))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let bad_type =
        json!({ "activities": [{ "id": "y", "userId": "u", "type": "login", "occurredAt": "2026-12-01T00:00:00Z" }] });
    assert_eq!(
        p.call_events(Method::POST, "/activities", &operator(), Some(bad_type)).await.status(),
        StatusCode::BAD_REQUEST
    );
    let ok =
        json!({ "activities": [{ "id": "z", "userId": "u", "type": "LOGIN", "occurredAt": "2026-12-01T00:00:00Z" }] });
    assert_eq!(
        p.call_events(Method::POST, "/activities", &hero, Some(ok.clone())).await.status(),
        StatusCode::FORBIDDEN
    );
    let auditor = Identity { roles: vec![Role::Auditor], ..operator() };
    assert_eq!(p.call_events(Method::POST, "/activities", &auditor, Some(ok)).await.status(), StatusCode::FORBIDDEN);
}

async fn logins_while_the_events_service_is_down_arrive_exactly_once(store: TestStore) {
    let mut p = Platform::start(store).await;
    let mut players = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        players.push(p.signup(name, None).await);
    }
    p.login("alpha").await;
    p.delivered().await;

    p.stop_events().await;
    for day in 0..3 {
        for name in ["alpha", "bravo", "charlie"] {
            p.login(name).await;
        }
        if day < 2 {
            p.next_day();
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.auth.db.outbox_pending().await.unwrap() >= 9, "the logins wait in the outbox");

    p.restart_events().await;
    p.delivered().await;
    assert_eq!(p.count(&players[0].sub, "LOGIN").await, 4);
    assert_eq!(p.count(&players[1].sub, "LOGIN").await, 3);
    assert_eq!(p.count(&players[2].sub, "LOGIN").await, 3);

    // An answer lost in transit: the same rows are sent again, and counted once.
    rewards_kit::with_pool!(p.auth.db.inner(), |pool| {
        sqlx::query("UPDATE outbox SET delivered_at = NULL, next_attempt_at = 0")
            .execute(pool)
            .await
            .unwrap()
            .rows_affected()
    });
    p.delivered().await;
    assert_eq!(p.count(&players[0].sub, "LOGIN").await, 4);
    assert_eq!(p.count(&players[1].sub, "SIGNUP").await, 1);
}
