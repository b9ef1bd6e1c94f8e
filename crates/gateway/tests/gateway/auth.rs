//! Every way an access token can be wrong is 401 and never forwarded.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use rewards_auth::keys::{AccessClaims, encoding_key, generate_key};
use rewards_kit::identity::Role;
use serde_json::{Value, json};

use crate::support::*;

fn claims(exp_in: i64) -> AccessClaims {
    let now = chrono::Utc::now().timestamp();
    AccessClaims {
        sub: "u-1".into(),
        username: "forger".into(),
        roles: vec![Role::Admin],
        iss: "rewards-auth".into(),
        aud: "rewards".into(),
        iat: now,
        nbf: now,
        exp: now + exp_in,
        jti: uuid::Uuid::new_v4().to_string(),
        tv: 0,
    }
}

/// An EdDSA token for `claims`, signed with `key` and naming it.
fn sign_with(key: &rewards_auth::store::KeyRecord, claims: &AccessClaims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &encoding_key(key)).unwrap()
}

/// The auth service's current signing key.
async fn signing_key(gw: &TestGateway) -> rewards_auth::store::KeyRecord {
    gw.auth.keys.ring().await.unwrap().signer(chrono::Utc::now()).unwrap().clone()
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_bearer_challenge_and_never_forwarded() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let real = signing_key(&gw).await;

    let expired = sign_with(&real, &claims(-120));
    let wrong_audience = sign_with(&real, &AccessClaims { aud: "someone-else".into(), ..claims(600) });
    let wrong_issuer = sign_with(&real, &AccessClaims { iss: "evil".into(), ..claims(600) });
    let not_yet = sign_with(&real, &AccessClaims { nbf: chrono::Utc::now().timestamp() + 600, ..claims(1200) });
    let stranger = generate_key(chrono::Utc::now(), chrono::Utc::now());
    let unknown_kid = sign_with(&stranger, &claims(600));
    let mut parts: Vec<String> = t.user.split('.').map(str::to_owned).collect();
    let mut payload: serde_json::Value = serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["ADMIN"]);
    parts[1] = B64.encode(payload.to_string());
    let tampered = parts.join(".");
    let alg_none = format!(
        "{}.{}.",
        B64.encode(json!({ "alg": "none", "typ": "JWT", "kid": real.kid }).to_string()),
        B64.encode(serde_json::to_string(&claims(600)).unwrap())
    );
    // The public key used as an HMAC secret: the classic algorithm confusion.
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(real.kid.clone());
    let confused = jsonwebtoken::encode(&hs_header, &claims(600), &EncodingKey::from_secret(&real.public_key)).unwrap();

    // Signed with the real key, but naming a critical extension (RFC 7797's
    // unencoded payload) that nothing here understands.
    let mut crit_header = Header::new(Algorithm::EdDSA);
    crit_header.kid = Some(real.kid.clone());
    crit_header.crit = Some(vec!["b64".into()]);
    crit_header.extras.insert("b64", false);
    let critical = jsonwebtoken::encode(&crit_header, &claims(600), &encoding_key(&real)).unwrap();

    let before = gw.echo.hits();
    for (what, token) in [
        ("garbage", "not-a-jwt".to_owned()),
        ("expired", expired),
        ("wrong audience", wrong_audience),
        ("wrong issuer", wrong_issuer),
        ("not yet valid", not_yet),
        ("unknown kid", unknown_kid),
        ("tampered", tampered),
        ("alg none", alg_none),
        ("HS256 with the public key", confused),
        ("an unknown critical extension", critical),
    ] {
        let response = gw.call(Method::GET, "/echo/items/1", Some(&token)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
        problem(response, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
    let basic = gw
        .call(Method::GET, "/echo/items/1", None)
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    problem(basic, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    assert_eq!(gw.echo.hits(), before, "no refused request reached the backend");

    // A stale token on a public route is ignored rather than refused.
    let public = gw.call(Method::GET, "/echo/public", Some("not-a-jwt")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status(), StatusCode::OK);

    rewards_auth::keys::rotate(&gw.auth.db, chrono::Utc::now(), chrono::Duration::zero()).await.unwrap();
    gw.auth.keys.reload().await.unwrap();
    let fresh = gw.login("gw_user", "password-123").await;
    let new_kid = jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap();
    assert_ne!(Some(new_kid), jsonwebtoken::decode_header(&t.user).unwrap().kid);
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&fresh)).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status(),
        StatusCode::OK,
        "the old key still verifies"
    );
}

/// One request on a raw keep-alive connection: the status and the JSON body.
async fn exchange(stream: &mut tokio::net::TcpStream, path: &str, authorization: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = authorization.map(|a| format!("authorization: {a}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the connection");
        received.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let head = text[..end].to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a response with a length");
        if received.len() >= end + 4 + length {
            let status = head[9..12].parse().unwrap();
            let body = serde_json::from_slice(&received[end + 4..end + 4 + length]).unwrap();
            return (status, body);
        }
    }
}

#[tokio::test]
async fn one_connection_changing_tokens_is_each_caller_in_turn() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let expired = sign_with(&signing_key(&gw).await, &claims(-120));
    let mut stream = tokio::net::TcpStream::connect(gw.gateway.addr()).await.unwrap();

    let caller = |seen: &Value| {
        let proof = seen["headers"]["x-rewards-identity"].as_str().unwrap();
        let path = seen["uri"].as_str().unwrap();
        let vouched = gw.key.verify(&http::Method::GET, path, proof.as_bytes()).expect("the gateway's proof");
        vouched.caller.map(|c| c.username)
    };
    // The connection remembers the header it last sent: every change of
    // token, and every bad token after a good one, must still be noticed.
    let user = format!("Bearer {}", t.user);
    let operator = format!("Bearer {}", t.operator);
    for round in 0..2 {
        let (status, seen) = exchange(&mut stream, "/echo/items/1", Some(&user)).await;
        assert_eq!((status, caller(&seen).as_deref()), (200, Some("gw_user")), "round {round}");
        let (status, seen) = exchange(&mut stream, "/echo/items/1", Some(&user)).await;
        assert_eq!((status, caller(&seen).as_deref()), (200, Some("gw_user")), "round {round}, again");
        let (status, seen) = exchange(&mut stream, "/echo/items/1", Some(&operator)).await;
        assert_eq!((status, caller(&seen).as_deref()), (200, Some("gw_operator")), "round {round}");
        let (status, body) = exchange(&mut stream, "/echo/items/1", Some(&format!("Bearer {expired}"))).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHENTICATED")), "round {round}, expired");
        let (status, _) = exchange(&mut stream, "/echo/items/1", Some(&format!("Bearer {}x", t.user))).await;
        assert_eq!(status, 401, "round {round}, the user's token with a byte more");
        let (status, _) = exchange(&mut stream, "/echo/items/1", None).await;
        assert_eq!(status, 401, "round {round}, no token");
        let (status, seen) = exchange(&mut stream, "/echo/public", Some(&user)).await;
        assert_eq!((status, caller(&seen).as_deref()), (200, Some("gw_user")), "round {round}, public route");
        let (status, seen) = exchange(&mut stream, "/echo/public", Some("Basic YWRtaW46YWRtaW4=")).await;
        assert_eq!((status, caller(&seen)), (200, None), "round {round}, not a bearer token");
    }
}

/// A role change holds at every gateway within a second: the user's earlier
/// access tokens (cached verified by both instances, and by their
/// connections) are refused, a new sign-in works, other users go on.
#[tokio::test]
async fn a_role_change_refuses_earlier_tokens_at_every_gateway_within_a_second() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let second = gw.another_instance();
    let at = |instance: &GatewayUnderTest, token: &str| {
        instance.client.get(instance.url("/echo/items/1")).bearer_auth(token.to_owned()).send()
    };
    for instance in [&gw.gateway, &second] {
        for token in [&t.user, &t.operator] {
            assert_eq!(at(instance, token).await.unwrap().status(), StatusCode::OK, "accepted before");
        }
    }

    let change = gw
        .call(Method::PUT, "/auth-service/users/gw_user/roles", Some(&t.admin))
        .json(&json!({ "roles": ["AUDITOR"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), StatusCode::OK);
    let changed = std::time::Instant::now();

    for (name, instance) in [("first", &gw.gateway), ("second", &second)] {
        loop {
            let response = at(instance, &t.user).await.unwrap();
            if response.status() == StatusCode::UNAUTHORIZED {
                problem(response, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
                break;
            }
            assert!(changed.elapsed() < std::time::Duration::from_secs(1), "the {name} gateway still accepts it");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let fresh = gw.login("gw_user", "password-123").await;
    for instance in [&gw.gateway, &second] {
        assert_eq!(at(instance, &t.user).await.unwrap().status(), StatusCode::UNAUTHORIZED, "and stays refused");
        assert_eq!(at(instance, &fresh).await.unwrap().status(), StatusCode::OK, "a new sign-in works");
        assert_eq!(at(instance, &t.operator).await.unwrap().status(), StatusCode::OK, "others go on");
    }
    // The feed is for internal services (and ADMINs, who may do anything).
    let feed = gw.call(Method::GET, "/auth-service/revocations", Some(&t.operator)).send().await.unwrap();
    problem(feed, StatusCode::FORBIDDEN, "FORBIDDEN").await;
}

/// Signing out everywhere through the gateway: the caller's own earlier
/// access token is refused within a second.
#[tokio::test]
async fn signing_out_everywhere_refuses_the_callers_tokens_within_a_second() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status(), StatusCode::OK);
    let out = gw.call(Method::DELETE, "/auth-service/users/me/sessions", Some(&t.user)).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let signed_out = std::time::Instant::now();
    while gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status() == StatusCode::OK {
        assert!(signed_out.elapsed() < std::time::Duration::from_secs(1), "the token still works");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&t.operator)).send().await.unwrap().status(), StatusCode::OK);
}

/// A disabled account's token is refused within a second; re-enabled, its
/// owner signs in again.
#[tokio::test]
async fn a_disabled_accounts_tokens_are_refused_within_a_second() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status(), StatusCode::OK);
    let status = |value: &str| {
        gw.call(Method::PUT, "/auth-service/users/gw_user/status", Some(&t.admin)).json(&json!({ "status": value }))
    };
    assert_eq!(status("DISABLED").send().await.unwrap().status(), StatusCode::OK);
    let disabled = std::time::Instant::now();
    while gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status() == StatusCode::OK {
        assert!(disabled.elapsed() < std::time::Duration::from_secs(1), "the token still works");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let login = gw
        .call(Method::POST, "/auth-service/auth/login", None)
        .json(&json!({ "username": "gw_user", "password": "password-123" }))
        .send()
        .await
        .unwrap();
    problem(login, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_eq!(status("ACTIVE").send().await.unwrap().status(), StatusCode::OK);
    let fresh = gw.login("gw_user", "password-123").await;
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&fresh)).send().await.unwrap().status(), StatusCode::OK);
}

/// A revoked signing key: every token it signed is refused within a second
/// (the admin's own too), and new sign-ins use its successor.
#[tokio::test]
async fn a_revoked_signing_keys_tokens_are_refused_within_a_second() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&t.user)).send().await.unwrap().status(), StatusCode::OK);
    let kid = jsonwebtoken::decode_header(&t.user).unwrap().kid.unwrap();
    let revoke =
        gw.call(Method::POST, &format!("/auth-service/keys/{kid}/revoke"), Some(&t.admin)).send().await.unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let revoked = std::time::Instant::now();
    for token in [&t.user, &t.admin] {
        while gw.call(Method::GET, "/echo/items/1", Some(token)).send().await.unwrap().status() == StatusCode::OK {
            assert!(revoked.elapsed() < std::time::Duration::from_secs(1), "a token of the revoked key still works");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let fresh = gw.login("gw_user", "password-123").await;
    assert_ne!(jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap(), kid);
    assert_eq!(gw.call(Method::GET, "/echo/items/1", Some(&fresh)).send().await.unwrap().status(), StatusCode::OK);
}
