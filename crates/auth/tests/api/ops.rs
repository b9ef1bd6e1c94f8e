//! Health, readiness, bootstrap, defence in depth and the OpenAPI document.

use reqwest::StatusCode;
use rewards_auth::AuthSettings;
use rewards_kit::clock::SharedClock;
use rewards_kit::store_tests;
use rewards_kit::testing::{TestServer, TestStore, assert_ops_contract, assert_unready};
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    serves_health_and_ready_and_reports_a_lost_store,
    the_bootstrap_admin_uses_the_configured_password_once,
    a_generated_admin_password_is_not_guessable,
    direct_calls_without_the_gateways_proof_are_refused,
);

async fn serves_health_and_ready_and_reports_a_lost_store(store: TestStore) {
    let auth = TestAuth::start(store).await;
    assert_ops_contract(&auth.server, &auth.store).await;
    auth.state.store().close().await;
    assert_unready(&auth.server).await;
}

async fn the_bootstrap_admin_uses_the_configured_password_once(store: TestStore) {
    let url = store.url.clone();
    let auth = TestAuth::start(store).await;
    let tokens = auth.tokens("admin", ADMIN_PASSWORD).await;
    assert_eq!(tokens["user"]["roles"], json!(["ADMIN"]));
    // A restart with another password changes nothing: the admin exists.
    let mut settings = AuthSettings::for_tests();
    settings.admin_password = rewards_kit::config::Secret::new("another-password");
    rewards_auth::open(&settings, &url, SharedClock::system()).await.unwrap();
    assert_eq!(auth.login("admin", ADMIN_PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(auth.login("admin", "another-password").await.status(), StatusCode::UNAUTHORIZED);
}

async fn a_generated_admin_password_is_not_guessable(store: TestStore) {
    let state = rewards_auth::open(&AuthSettings::for_tests(), &store.url, SharedClock::system()).await.unwrap();
    let admin = state.db.user_by_username("admin").await.unwrap().expect("an admin was created");
    assert!(admin.password_hash.starts_with("$argon2id$"));
    let server =
        TestServer::spawn(rewards_auth::router(state.clone(), rewards_kit::identity::IdentityKey::generate())).await;
    for guess in ["admin", "password", "admin123", "changeme"] {
        let response = server
            .client
            .post(server.url("/auth/login"))
            .json(&json!({ "username": "admin", "password": guess }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{guess}");
    }
}

async fn direct_calls_without_the_gateways_proof_are_refused(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let plain = &auth.server.client;
    for path in ["/users", "/users/me", "/users/admin", "/audit"] {
        let forged = plain
            .get(auth.server.url(path))
            .header("x-user-id", "1")
            .header("x-user-roles", "ADMIN")
            .send()
            .await
            .unwrap();
        problem(forged, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
    // Public routes stay public without a proof.
    let jwks = plain.get(auth.server.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);
    let doc: Value = plain.get(auth.server.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in [
        "/auth/signup",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/users/register",
        "/users/me",
        "/users",
        "/users/{username}",
        "/users/{username}/roles",
        "/audit",
        "/.well-known/jwks.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}
