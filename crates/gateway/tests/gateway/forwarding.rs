//! Routing, prefixes, identity to backends, timeouts, body limit, docs, metrics.

use reqwest::{Method, StatusCode};
use rewards_kit::identity::Role;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn only_paths_with_a_rule_are_forwarded_and_prefixes_match_on_segments() {
    let gw = TestGateway::start().await;
    let seen: Value = gw.call(Method::GET, "/echo/public?x=1", None).send().await.unwrap().json().await.unwrap();
    assert_eq!((seen["instance"].as_str(), seen["uri"].as_str()), (Some("echo-a"), Some("/public?x=1")));
    assert_eq!(gw.echo.hits(), 1);

    for path in ["/echox/public", "/echo", "/echo/", "/echo/unknown", "/echo/items", "/echo/items/1/more", "/nowhere"] {
        let response = gw.call(Method::GET, path, None).send().await.unwrap();
        problem(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    let wrong_method = gw.call(Method::DELETE, "/echo/public", None).send().await.unwrap();
    problem(wrong_method, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_eq!(gw.echo.hits(), 1, "nothing without a rule reached the backend");
}

#[tokio::test]
async fn rules_are_enforced_for_every_role() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    let status = |method: Method, path: &'static str, token: Option<String>| {
        let request = gw.call(method, path, token.as_deref());
        async move { request.json(&json!({})).send().await.unwrap().status() }
    };
    for token in [&t.user, &t.operator, &t.auditor, &t.admin] {
        assert_eq!(status(Method::GET, "/echo/items/7", Some(token.clone())).await, StatusCode::OK);
    }
    assert_eq!(status(Method::POST, "/echo/items", Some(t.user.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::POST, "/echo/items", Some(t.auditor.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::POST, "/echo/items", Some(t.operator.clone())).await, StatusCode::OK);
    assert_eq!(
        status(Method::POST, "/echo/items", Some(t.admin.clone())).await,
        StatusCode::OK,
        "ADMIN may do everything"
    );
    assert_eq!(status(Method::GET, "/echo/admin-only", Some(t.operator.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::GET, "/echo/admin-only", Some(t.admin.clone())).await, StatusCode::OK);
    let anonymous = gw.call(Method::GET, "/echo/items/7", None).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    problem(anonymous, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let forbidden = gw.call(Method::POST, "/echo/items", Some(&t.user)).send().await.unwrap();
    problem(forbidden, StatusCode::FORBIDDEN, "FORBIDDEN").await;

    // The auth service's own rules, through the gateway.
    assert_eq!(status(Method::GET, "/auth-service/users", Some(t.operator.clone())).await, StatusCode::FORBIDDEN);
    assert_eq!(status(Method::GET, "/auth-service/users", Some(t.admin.clone())).await, StatusCode::OK);
    assert_eq!(status(Method::GET, "/auth-service/audit", Some(t.auditor.clone())).await, StatusCode::OK);
    let me: Value =
        gw.call(Method::GET, "/auth-service/users/me", Some(&t.user)).send().await.unwrap().json().await.unwrap();
    assert_eq!((me["username"].as_str(), me["roles"].clone()), (Some("gw_user"), json!([Role::User])));
}

#[tokio::test]
async fn the_backend_gets_the_verified_identity_and_nothing_a_client_made_up() {
    let gw = TestGateway::start().await;
    let t = gw.tokens().await;
    // HTTP/1.1 is served by the gateway's own HTTP/1 code, HTTP/1.0 by hyper:
    // both the same way.
    let spoofing = |path: &str, token: Option<&str>, version: http::Version| {
        gw.call(Method::GET, path, token)
            .version(version)
            .header("X-User-Id", "someone-else")
            .header("X-User-Roles", "ADMIN")
            .header("X-Rewards-Identity", "v1.1.e30.AAAA")
            .header("X-Internal-Caller", "auth")
            .header("X-Forwarded-For", "10.9.8.7")
            .header("X-Real-IP", "10.9.8.7")
            .header("Forwarded", "for=10.9.8.7")
            .header("X-Request-Id", "trace-42")
    };
    let versions = [http::Version::HTTP_11, http::Version::HTTP_10];
    let cases = [("/echo/public", None), ("/echo/items/1", Some(t.user.as_str()))];
    for ((path, token), version) in cases.into_iter().flat_map(|case| versions.map(|v| (case, v))) {
        let response = spoofing(path, token, version).send().await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "trace-42");
        let seen: Value = response.json().await.unwrap();
        let headers = seen["headers"].as_object().unwrap();
        for name in ["x-user-id", "x-user-roles", "x-internal-caller", "authorization", "x-real-ip", "forwarded"] {
            assert!(!headers.contains_key(name), "{name} reached the backend on {path} ({version:?})");
        }
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-request-id"], "trace-42");
        let backend_path = seen["uri"].as_str().unwrap();
        let proof = headers["x-rewards-identity"].as_str().unwrap();
        let vouched = gw.key.verify(&http::Method::GET, backend_path, proof.as_bytes()).expect("the gateway's proof");
        assert_eq!(vouched.client_ip, Some("127.0.0.1".parse().unwrap()));
        match token {
            None => assert_eq!(vouched.caller, None, "public route, anonymous caller"),
            Some(_) => {
                let caller = vouched.caller.expect("the signed-in caller");
                assert_eq!((caller.username.as_str(), caller.roles.as_slice()), ("gw_user", &[Role::User][..]));
            }
        }
    }
}

#[tokio::test]
async fn slow_backends_are_504_and_big_bodies_413() {
    let gw = TestGateway::start_with(|s| s.body_limit = 2048).await;
    let t = gw.tokens().await;
    let started = std::time::Instant::now();
    let slow = gw.call(Method::GET, "/echo/slow", Some(&t.user)).send().await.unwrap();
    problem(slow, StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "the route's own 200 ms timeout applies");

    let big = gw.call(Method::POST, "/echo/upload", None).body(vec![b'x'; 4096]).send().await.unwrap();
    problem(big, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    let small: Value =
        gw.call(Method::POST, "/echo/upload", None).body(vec![b'x'; 1024]).send().await.unwrap().json().await.unwrap();
    assert_eq!(small["bodyLength"], 1024, "bodies are streamed through whole");
}

#[tokio::test]
async fn docs_and_the_merged_openapi_document_are_served_offline() {
    let gw = TestGateway::start().await;
    let doc: Value = gw.call(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    for path in
        ["/auth-service/auth/login", "/auth-service/users/{username}/roles", "/auth-service/.well-known/jwks.json"]
    {
        assert!(doc["paths"].get(path).is_some(), "{path} in {}", doc["paths"]);
    }
    assert!(doc["components"]["schemas"].get("UserView").is_some());
    assert!(doc["info"]["description"].as_str().unwrap().contains("echo"), "the echo backend has no document: said so");

    let page = gw.call(Method::GET, "/docs/", None).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "no assets from the internet");
    let config = gw.call(Method::GET, "/docs/swagger-initializer.js", None).send().await.unwrap().text().await.unwrap();
    assert!(config.contains("/openapi.json"), "{config}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_upstream_for_operators_only() {
    let gw = TestGateway::start().await;
    gw.call(Method::GET, "/echo/public", None).send().await.unwrap();
    gw.call(Method::GET, "/echo/items/1", None).send().await.unwrap();
    let text = gw.call(Method::GET, "/metrics", None).send().await.unwrap().text().await.unwrap();
    // Several gateways share this test process's recorder: find this one's upstream.
    let upstream = format!("upstream=\"{}\"", gw.echo.server.base_url);
    let forwarded = text.lines().find(|l| {
        l.starts_with("gateway_requests_total")
            && l.contains("route=\"GET /echo/public\"")
            && l.contains("status=\"200\"")
            && l.contains(&upstream)
    });
    assert!(forwarded.is_some_and(|l| l.ends_with(" 1")), "no counter for the forwarded request:\n{text}");
    assert!(text.contains("route=\"GET /echo/items/{id}\"") && text.contains("status=\"401\""));
    assert!(text.contains("gateway_request_duration_seconds_bucket"));
    assert!(text.contains("gateway_instance_healthy"));

    let closed = TestGateway::start_with(|s| s.metrics_allow = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let refused = closed.call(Method::GET, "/metrics", None).send().await.unwrap();
    problem(refused, StatusCode::FORBIDDEN, "FORBIDDEN").await;
}

#[tokio::test]
async fn a_request_id_the_gateway_refuses_is_replaced_everywhere_and_the_backend_sees_one() {
    let gw = TestGateway::start().await;
    let refused = "not a sane id; <script>";
    let response = gw.call(Method::GET, "/echo/public", None).header("X-Request-Id", refused).send().await.unwrap();
    let answered = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(answered, refused, "a refused id is not echoed back");
    uuid::Uuid::parse_str(&answered).expect("a fresh UUID instead");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["requestIds"], json!([answered]), "the backend gets the same fresh id, alone");

    // A sane id sent twice over, with a refused one: the first, alone.
    let response = gw
        .call(Method::GET, "/echo/public", None)
        .header("X-Request-Id", "trace-7")
        .header("X-Request-Id", refused)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-7");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["requestIds"], json!(["trace-7"]));
}
