//! Signing keys: published, rotated without downtime, retired after their tokens expire.

use chrono::Duration;
use reqwest::StatusCode;
use rewards_kit::clock::Clock;
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::Value;

use crate::sessions::verify;
use crate::support::*;

store_tests!(rotation_keeps_old_tokens_valid_during_the_overlap_and_not_after, keys_survive_a_restart);

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
