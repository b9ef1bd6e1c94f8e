//! Starting the events service for a test and calling it as the gateway would.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use rewards_events::{AppState, EventsSettings};
use rewards_kit::clock::{ManualClock, SharedClock};
use rewards_kit::identity::{IDENTITY_HEADER, Identity, IdentityKey, Role};
use rewards_kit::testing::{TestServer, TestStore};
use serde_json::{Value, json};

pub use rewards_kit::testing::{all_at_once, count};

pub struct TestEvents {
    pub server: TestServer,
    pub key: IdentityKey,
    pub clock: ManualClock,
    pub state: AppState,
    pub store: Arc<TestStore>,
}

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

impl TestEvents {
    pub async fn start(store: TestStore) -> Self {
        Self::start_with(store, EventsSettings::default()).await
    }

    pub async fn start_with(store: TestStore, settings: EventsSettings) -> Self {
        let url = store.url.clone();
        Self::start_at(store, &url, settings).await
    }

    /// Started on `store`, opened with `url` (the store's own, or one that
    /// reaches it another way, such as through a fault proxy).
    pub async fn start_at(store: TestStore, url: &str, settings: EventsSettings) -> Self {
        let clock = ManualClock::new(at("2026-11-24T03:00:00Z"));
        let state = rewards_events::open(&settings, url, SharedClock::new(clock.clone())).await.unwrap();
        let key = IdentityKey::generate();
        let server = TestServer::spawn(rewards_events::router(state.clone(), key.clone())).await;
        Self { server, key, clock, state, store: Arc::new(store) }
    }

    /// A second instance of the service on the same store, as two behind one
    /// gateway: its own memory of the catalog, its own grant writers.
    pub async fn another_instance(&self) -> Self {
        let settings = self.state.settings.clone();
        let clock = SharedClock::new(self.clock.clone());
        let state = rewards_events::open(&settings, &self.store.url, clock).await.unwrap();
        let server = TestServer::spawn(rewards_events::router(state.clone(), self.key.clone())).await;
        Self { server, key: self.key.clone(), clock: self.clock.clone(), state, store: self.store.clone() }
    }

    pub fn call(&self, method: Method, path: &str, who: Option<&Identity>) -> RequestBuilder {
        let request = self.server.client.request(method.clone(), self.server.url(path));
        match who {
            Some(who) => request.header(IDENTITY_HEADER, self.key.sign(&method, path, who)),
            None => request,
        }
    }

    pub async fn send(&self, method: Method, path: &str, who: Option<&Identity>, body: Option<Value>) -> Response {
        let request = self.call(method, path, who);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        request.send().await.unwrap()
    }

    /// Creates an event as an operator; returns its view.
    pub async fn event(&self, body: Value) -> Value {
        let response = self.send(Method::POST, "/events", Some(&operator()), Some(body)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn reward(&self, body: Value) -> Value {
        let response = self.send(Method::POST, "/rewards", Some(&operator()), Some(body)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }
}

pub fn who(name: &str, roles: &[Role]) -> Identity {
    Identity { sub: format!("id-{name}"), username: name.to_owned(), roles: roles.to_vec() }
}

pub fn operator() -> Identity {
    who("olivia", &[Role::Operator])
}

pub fn admin() -> Identity {
    who("adam", &[Role::Admin])
}

pub fn auditor() -> Identity {
    who("audrey", &[Role::Auditor])
}

pub fn player() -> Identity {
    who("pat", &[Role::User])
}

/// A valid event body: a week in Seoul, active.
pub fn weekly(name: &str) -> Value {
    json!({
        "name": name,
        "description": "log in three days",
        "condition": { "type": "loginDays", "days": 3 },
        "startDate": "2026-11-23",
        "endDate": "2026-11-29",
        "status": "ACTIVE",
    })
}

pub async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}
