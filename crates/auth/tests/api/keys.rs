//! Signing keys: published, rotated without downtime, retired after their tokens expire.

use chrono::Duration;
use reqwest::{Method, StatusCode};
use rewards_kit::clock::Clock;
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::Value;

use crate::sessions::verify;
use crate::support::*;

store_tests!(
    rotation_keeps_old_tokens_valid_during_the_overlap_and_not_after,
    keys_survive_a_restart,
    a_revoked_key_is_replaced_unpublished_and_named_in_the_feed,
);

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn published_kids(auth: &TestAuth) -> Vec<String> {
    let jwks: Value = auth.get("/.well-known/jwks.json", None).await.json().await.unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

async fn access_token(auth: &TestAuth) -> String {
    auth.tokens("admin", ADMIN_PASSWORD).await["access_token"].as_str().unwrap().to_owned()
}

async fn rotation_keeps_old_tokens_valid_during_the_overlap_and_not_after(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let old_token = access_token(&auth).await;
    let old_kid = kid(&old_token);
    assert_eq!(published_kids(&auth).await, vec![old_kid.clone()]);

    // Rotate with a 5-minute lead: published at once, not yet signing.
    let new_key = rewards_auth::keys::rotate(&auth.state.db, auth.clock.now(), Duration::minutes(5)).await.unwrap();
    auth.state.keys.reload().await.unwrap();
    assert_eq!(published_kids(&auth).await, [new_key.kid.clone(), old_kid.clone()]);
    assert_eq!(kid(&access_token(&auth).await), old_kid, "the old key signs during the lead");

    // After the lead the new key signs; old tokens still verify.
    auth.clock.advance(Duration::minutes(5));
    let new_token = access_token(&auth).await;
    assert_eq!(kid(&new_token), new_key.kid);
    assert!(verify(&auth, &old_token).await.is_ok(), "old tokens verify during the overlap");
    assert!(verify(&auth, &new_token).await.is_ok());

    // Once every token the old key signed has expired, it is no longer published.
    auth.clock.advance(Duration::minutes(15));
    assert_eq!(published_kids(&auth).await, vec![new_key.kid.clone()]);
    let err = verify(&auth, &old_token).await.unwrap_err();
    assert!(err.contains("kid not published"), "{err}");
    assert!(verify(&auth, &access_token(&auth).await).await.is_ok());
}

async fn keys_survive_a_restart(store: TestStore) {
    let url = store.url.clone();
    let auth = TestAuth::start(store).await;
    let token = access_token(&auth).await;
    let before = published_kids(&auth).await;
    let settings = rewards_auth::AuthSettings::for_tests();
    let again = rewards_auth::open(&settings, &url, rewards_kit::clock::SharedClock::system()).await.unwrap();
    let ring = again.keys.ring().await.unwrap();
    let jwks = ring.jwks(chrono::Utc::now(), settings.access_ttl());
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, before.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(kid(&token), before[0]);
    assert_eq!(auth.get("/.well-known/jwks.json", None).await.status(), StatusCode::OK);
}

/// `POST /keys/{kid}/revoke`: the key that signs now is revoked and a fresh
/// one signs in its place; the revoked key is published no more and named in
/// the gateways' feed; the step is audited.
async fn a_revoked_key_is_replaced_unpublished_and_named_in_the_feed(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let before = access_token(&auth).await;
    let old_kid = kid(&before);
    let path = format!("/keys/{old_kid}/revoke");

    let player = someone(&[rewards_kit::identity::Role::User]);
    problem(auth.call(Method::POST, &path, Some(&player)).send().await.unwrap(), StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    assert_eq!(auth.call(Method::POST, &path, Some(&admin)).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    problem(auth.call(Method::POST, &path, Some(&admin)).send().await.unwrap(), StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;

    let published = published_kids(&auth).await;
    assert!(!published.contains(&old_kid), "{published:?}");
    let after = access_token(&auth).await;
    assert_ne!(kid(&after), old_kid);
    assert!(published.contains(&kid(&after)));
    assert!(verify(&auth, &after).await.is_ok());
    assert!(verify(&auth, &before).await.is_err(), "nothing verifies the revoked key's tokens");

    let gateway = rewards_kit::identity::Identity::service("gateway");
    let feed: Value = auth.get("/revocations", Some(&gateway)).await.json().await.unwrap();
    assert_eq!(feed["revokedKeys"], serde_json::json!([old_kid]));
    let audit: Value = auth.get("/audit", Some(&admin)).await.json().await.unwrap();
    let entry = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "key.revoke").expect("audited");
    assert_eq!(entry["entityId"], old_kid.as_str());
    assert_eq!(entry["after"]["successor"], kid(&after).as_str());
}
