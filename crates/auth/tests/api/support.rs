//! Starting the auth service for a test and calling it as the gateway would.

use std::net::IpAddr;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use rewards_auth::{AppState, AuthSettings};
use rewards_kit::clock::{ManualClock, SharedClock};
use rewards_kit::identity::{IDENTITY_HEADER, Identity, IdentityKey, Role, Vouched};
use rewards_kit::testing::{TestServer, TestStore};
use serde_json::{Value, json};

pub use rewards_kit::testing::{all_at_once, count};

pub const ADMIN_PASSWORD: &str = "bootstrap-admin-pw";

pub struct TestAuth {
    pub server: TestServer,
    pub key: IdentityKey,
    pub clock: ManualClock,
    pub state: AppState,
    pub store: TestStore,
}

impl TestAuth {
    pub async fn start(store: TestStore) -> Self {
        Self::start_with(store, |_| {}).await
    }

    pub async fn start_with(store: TestStore, tweak: impl FnOnce(&mut AuthSettings)) -> Self {
        let mut settings = AuthSettings::for_tests();
        settings.admin_password = rewards_kit::config::Secret::new(ADMIN_PASSWORD);
        tweak(&mut settings);
        let clock = ManualClock::starting_now();
        let state = rewards_auth::open(&settings, &store.url, SharedClock::new(clock.clone())).await.unwrap();
        let key = IdentityKey::generate();
        let server = TestServer::spawn(rewards_auth::router(state.clone(), key.clone())).await;
        Self { server, key, clock, state, store }
    }

    /// A request as the gateway forwards it: with a proof vouching for `who`
    /// (anonymous when `None`).
    pub fn call(&self, method: Method, path: &str, who: Option<&Identity>) -> RequestBuilder {
        self.call_from(method, path, who, None)
    }

    pub fn call_from(&self, method: Method, path: &str, who: Option<&Identity>, ip: Option<IpAddr>) -> RequestBuilder {
        let vouched = Vouched { caller: who.cloned(), client_ip: ip };
        let proof = self.key.sign(&method, path, vouched);
        self.server.client.request(method, self.server.url(path)).header(IDENTITY_HEADER, proof)
    }

    pub async fn post(&self, path: &str, who: Option<&Identity>, body: Value) -> Response {
        self.call(Method::POST, path, who).json(&body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str, who: Option<&Identity>) -> Response {
        self.call(Method::GET, path, who).send().await.unwrap()
    }

    pub async fn signup(&self, username: &str, password: &str) -> Value {
        let response = self.post("/auth/signup", None, json!({ "username": username, "password": password })).await;
        assert_eq!(response.status(), StatusCode::CREATED, "signup {username}");
        response.json().await.unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post("/auth/login", None, json!({ "username": username, "password": password })).await
    }

    /// Signs in and returns the token response.
    pub async fn tokens(&self, username: &str, password: &str) -> Value {
        let response = self.login(username, password).await;
        assert_eq!(response.status(), StatusCode::OK, "login {username}");
        response.json().await.unwrap()
    }

    /// The bootstrap admin, as the gateway would vouch for it.
    pub async fn admin(&self) -> Identity {
        identity_of(&self.tokens("admin", ADMIN_PASSWORD).await["user"])
    }

    /// A fresh account holding `roles`.
    pub async fn user_with(&self, username: &str, roles: &[Role]) -> Identity {
        let admin = self.admin().await;
        let response = self
            .post(
                "/users/register",
                Some(&admin),
                json!({ "username": username, "password": "password-123", "roles": roles }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        identity_of(&response.json::<Value>().await.unwrap())
    }
}

/// The identity the gateway derives from a user's access token.
pub fn identity_of(user: &Value) -> Identity {
    Identity {
        sub: user["id"].as_str().unwrap().to_owned(),
        username: user["username"].as_str().unwrap().to_owned(),
        roles: serde_json::from_value(user["roles"].clone()).unwrap(),
    }
}

/// Someone who holds exactly `roles` (no account behind it).
pub fn someone(roles: &[Role]) -> Identity {
    Identity { sub: format!("test-{}", uuid::Uuid::new_v4()), username: "someone".into(), roles: roles.to_vec() }
}

pub async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}
