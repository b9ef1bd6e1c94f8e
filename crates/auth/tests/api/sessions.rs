//! Sessions: login, refresh rotation and reuse detection, logout.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::{Method, StatusCode};
use rewards_auth::keys::AccessClaims;
use rewards_kit::identity::Role;
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    login_answers_an_oauth_token_pair_signed_with_a_published_key,
    bad_credentials_are_401_alike_for_unknown_users,
    a_username_is_found_only_by_its_ascii_spelling,
    refresh_rotates_and_a_replay_revokes_the_whole_session,
    concurrent_refreshes_of_one_token_let_exactly_one_through,
    refresh_tokens_expire,
    a_role_change_ends_the_users_sessions,
    signing_out_everywhere_ends_every_session_and_is_audited,
    changing_ones_password_ends_every_session,
    logout_revokes_the_session_of_its_own_user_only,
);

/// Verifies `token` against the service's JWKS, as the gateway does.
pub async fn verify(auth: &TestAuth, token: &str) -> Result<AccessClaims, String> {
    let jwks: Value = auth.get("/.well-known/jwks.json", None).await.json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).ok_or("kid not published")?;
    let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["rewards"]);
    validation.set_issuer(&["rewards-auth"]);
    jsonwebtoken::decode::<AccessClaims>(token, &key, &validation).map(|data| data.claims).map_err(|e| e.to_string())
}

async fn refresh(auth: &TestAuth, token: &str) -> reqwest::Response {
    auth.post("/auth/refresh", None, json!({ "refresh_token": token })).await
}

async fn login_answers_an_oauth_token_pair_signed_with_a_published_key(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let user = auth.signup("token_holder", "password-1").await;
    let response = auth.login("token_holder", "password-1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains("password-1") && !text.contains("argon2"));
    let tokens: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(tokens["user"], user);
    assert!(tokens["refresh_token"].as_str().unwrap().len() >= 43);

    let access = tokens["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert!(header.kid.is_some());
    let claims = verify(&auth, access).await.unwrap();
    assert_eq!(claims.sub, user["id"].as_str().unwrap());
    assert_eq!(claims.username, "token_holder");
    assert_eq!(claims.roles, [Role::User]);
    assert_eq!(claims.exp - claims.iat, 900);
    assert!(!claims.jti.is_empty());

    // A tampered token does not verify.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["ADMIN"]);
    parts[1] = B64.encode(payload.to_string());
    assert!(verify(&auth, &parts.join(".")).await.is_err());

    // The refresh token is stored hashed.
    let stored: Vec<String> = rewards_kit::with_pool!(auth.state.store(), |pool| {
        sqlx::query_scalar("SELECT token_hash FROM refresh_tokens").fetch_all(pool).await.unwrap()
    });
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    assert!(!stored.iter().any(|h| h == refresh_token));
    assert_eq!(stored.len(), 1);
}

async fn bad_credentials_are_401_alike_for_unknown_users(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("real_user", "password-1").await;
    let wrong = problem(auth.login("real_user", "password-2").await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let unknown =
        problem(auth.login("ghost_user", "password-1").await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    assert_eq!(wrong["detail"], unknown["detail"], "the answer does not tell who exists");
    let missing = auth.post("/auth/login", None, json!({ "username": "real_user" })).await;
    problem(missing, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
}

/// Usernames are ASCII, and case folds only in ASCII: `Kevin` spelt with
/// U+212A KELVIN SIGN (which Unicode lowercases to `k`) is nobody, at login
/// and at signup alike, while `KEVIN` is `kevin`.
async fn a_username_is_found_only_by_its_ascii_spelling(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("kevin", "password-1").await;
    let kelvin = "\u{212A}evin";
    assert_eq!(kelvin.to_lowercase(), "kevin", "the spelling Unicode folds onto kevin");
    problem(auth.login(kelvin, "password-1").await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let signup = auth.post("/auth/signup", None, json!({ "username": kelvin, "password": "password-1" })).await;
    problem(signup, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(auth.login("KEVIN", "password-1").await.status(), StatusCode::OK);
}

async fn refresh_rotates_and_a_replay_revokes_the_whole_session(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("rotator", "password-1").await;
    let first = auth.tokens("rotator", "password-1").await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();

    let response = refresh(&auth, &r1).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.unwrap();
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(second["token_type"], "Bearer");
    assert!(verify(&auth, second["access_token"].as_str().unwrap()).await.is_ok());

    // r1 was spent: presenting it again is a replay, and revokes r2 with it.
    problem(refresh(&auth, &r1).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    problem(refresh(&auth, &r2).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;

    // Another session of the same user is not affected.
    let other = auth.tokens("rotator", "password-1").await;
    assert_eq!(refresh(&auth, other["refresh_token"].as_str().unwrap()).await.status(), StatusCode::OK);

    problem(refresh(&auth, "not-a-token").await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    problem(auth.post("/auth/refresh", None, json!({})).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
}

async fn concurrent_refreshes_of_one_token_let_exactly_one_through(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("racer_two", "password-1").await;
    let tokens = auth.tokens("racer_two", "password-1").await;
    let token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let results =
        all_at_once(20, |_| auth.call(Method::POST, "/auth/refresh", None).json(&json!({ "refresh_token": token })))
            .await;
    assert_eq!(count(&results, StatusCode::OK, None), 1, "{results:?}");
    assert_eq!(count(&results, StatusCode::UNAUTHORIZED, None), 19, "{results:?}");
}

async fn refresh_tokens_expire(store: TestStore) {
    let auth = TestAuth::start_with(store, |s| s.refresh_token_ttl_secs = 3600).await;
    auth.signup("sleeper", "password-1").await;
    let early = auth.tokens("sleeper", "password-1").await;
    let late = auth.tokens("sleeper", "password-1").await;
    auth.clock.advance(chrono::Duration::minutes(59));
    assert_eq!(refresh(&auth, early["refresh_token"].as_str().unwrap()).await.status(), StatusCode::OK);
    auth.clock.advance(chrono::Duration::minutes(2));
    problem(refresh(&auth, late["refresh_token"].as_str().unwrap()).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        .await;
}

/// A role change ends the user's sessions (no refresh goes on with the old
/// roles); signing in again carries the new ones.
async fn a_role_change_ends_the_users_sessions(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    auth.signup("climber", "password-1").await;
    auth.signup("bystander", "password-1").await;
    let tokens = auth.tokens("climber", "password-1").await;
    let other = auth.tokens("bystander", "password-1").await;
    let put =
        auth.call(Method::PUT, "/users/climber/roles", Some(&admin)).json(&json!({ "roles": ["USER", "OPERATOR"] }));
    assert_eq!(put.send().await.unwrap().status(), StatusCode::OK);

    let stale = refresh(&auth, tokens["refresh_token"].as_str().unwrap()).await;
    problem(stale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    assert_eq!(
        refresh(&auth, other["refresh_token"].as_str().unwrap()).await.status(),
        StatusCode::OK,
        "others' go on"
    );
    let again = auth.tokens("climber", "password-1").await;
    let claims = verify(&auth, again["access_token"].as_str().unwrap()).await.unwrap();
    assert_eq!(claims.roles, [Role::User, Role::Operator]);

    // The tokens carry the user's token version, and the gateways' feed says
    // which version the climber's tokens must have now.
    let old = verify(&auth, tokens["access_token"].as_str().unwrap()).await.unwrap();
    assert_eq!((old.tv, claims.tv), (0, 1));
    let gateway = rewards_kit::identity::Identity::service("gateway");
    let feed: Value = auth.get("/revocations?since=0", Some(&gateway)).await.json().await.unwrap();
    let items = feed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{feed}");
    assert_eq!(items[0]["userId"], claims.sub.as_str());
    assert_eq!(items[0]["tokenVersion"], 1);
    assert_eq!(feed["until"], items[0]["at"]);
    assert_eq!(feed["more"], false);
    let later = format!("/revocations?since={}", items[0]["at"].as_i64().unwrap() + 1);
    let empty: Value = auth.get(&later, Some(&gateway)).await.json().await.unwrap();
    assert_eq!(empty["items"], json!([]));
    let player = identity_of(&again["user"]);
    problem(auth.get("/revocations", Some(&player)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
}

async fn logout_revokes_the_session_of_its_own_user_only(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("leaver", "password-1").await;
    auth.signup("bystander", "password-1").await;
    let leaver = auth.tokens("leaver", "password-1").await;
    let bystander = auth.tokens("bystander", "password-1").await;
    let leaver_id = identity_of(&leaver["user"]);
    let bystander_token = bystander["refresh_token"].as_str().unwrap();

    // Someone else's refresh token is not theirs to revoke.
    let response = auth.post("/auth/logout", Some(&leaver_id), json!({ "refresh_token": bystander_token })).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(refresh(&auth, bystander_token).await.status(), StatusCode::OK);

    let token = leaver["refresh_token"].as_str().unwrap();
    let response = auth.post("/auth/logout", Some(&leaver_id), json!({ "refresh_token": token })).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    problem(refresh(&auth, token).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;

    let anonymous = auth.post("/auth/logout", None, json!({ "refresh_token": token })).await;
    problem(anonymous, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

/// `DELETE /users/me/sessions` ends all of the caller's sessions; an ADMIN
/// may end anyone's, nobody else anyone else's.
async fn signing_out_everywhere_ends_every_session_and_is_audited(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    auth.signup("roamer", "password-1").await;
    auth.signup("other", "password-1").await;
    let phone = auth.tokens("roamer", "password-1").await;
    let laptop = auth.tokens("roamer", "password-1").await;
    let other = auth.tokens("other", "password-1").await;
    let roamer = identity_of(&phone["user"]);
    let other_id = identity_of(&other["user"]);

    let meddling = auth.call(Method::DELETE, "/users/roamer/sessions", Some(&other_id)).send().await.unwrap();
    problem(meddling, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let out = auth.call(Method::DELETE, "/users/me/sessions", Some(&roamer)).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    for session in [&phone, &laptop] {
        let stale = refresh(&auth, session["refresh_token"].as_str().unwrap()).await;
        problem(stale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
    assert_eq!(refresh(&auth, other["refresh_token"].as_str().unwrap()).await.status(), StatusCode::OK);
    let fresh = auth.tokens("roamer", "password-1").await;
    assert_eq!(verify(&auth, fresh["access_token"].as_str().unwrap()).await.unwrap().tv, 1);

    // An ADMIN signs someone else out; an unknown name is 404.
    let by_admin = auth.call(Method::DELETE, "/users/ROAMER/sessions", Some(&admin)).send().await.unwrap();
    assert_eq!(by_admin.status(), StatusCode::NO_CONTENT);
    problem(
        refresh(&auth, fresh["refresh_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
    let nobody = auth.call(Method::DELETE, "/users/nobody/sessions", Some(&admin)).send().await.unwrap();
    problem(nobody, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    let gateway = rewards_kit::identity::Identity::service("gateway");
    let feed: Value = auth.get("/revocations", Some(&gateway)).await.json().await.unwrap();
    assert_eq!(feed["items"][0]["userId"], roamer.sub.as_str());
    assert_eq!(feed["items"][0]["tokenVersion"], 2);
    let audit: Value = auth.get("/audit", Some(&admin)).await.json().await.unwrap();
    let steps: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "sessions.revoke")
        .map(|e| (e["actor"]["username"].as_str().unwrap(), e["entityId"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("admin", roamer.sub.as_str()), ("roamer", roamer.sub.as_str())], "newest first");
}

/// `POST /users/me/password` proves the current password, then ends every
/// session of the user (the feed bumps its version); the new password signs
/// in, the old one no longer does.
async fn changing_ones_password_ends_every_session(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("changer", "password-1").await;
    let session = auth.tokens("changer", "password-1").await;
    let changer = identity_of(&session["user"]);
    let change = |current: &str, new: &str| {
        auth.call(Method::POST, "/users/me/password", Some(&changer))
            .json(&json!({ "currentPassword": current, "newPassword": new }))
    };
    problem(change("password-9", "password-2").send().await.unwrap(), StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        .await;
    problem(change("password-1", "short").send().await.unwrap(), StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(auth.login("changer", "password-1").await.status(), StatusCode::OK, "nothing changed yet");

    assert_eq!(change("password-1", "password-2").send().await.unwrap().status(), StatusCode::NO_CONTENT);
    problem(
        refresh(&auth, session["refresh_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
    problem(auth.login("changer", "password-1").await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let fresh = auth.tokens("changer", "password-2").await;
    assert!(verify(&auth, fresh["access_token"].as_str().unwrap()).await.unwrap().tv >= 1);
    let admin = auth.admin().await;
    let audit: Value = auth.get("/audit", Some(&admin)).await.json().await.unwrap();
    let entry = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "password.change").expect("audited");
    assert_eq!(entry["actor"]["username"], "changer");
    assert!(!audit.to_string().contains("password-2"), "no password in the trail");
}
