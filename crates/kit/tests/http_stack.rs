//! The shared layer stack over real HTTP: every error a problem, request ids,
//! and identities trusted only with the gateway's proof.

use axum::Router;
use axum::http::Method;
use axum::routing::{get, post};
use reqwest::StatusCode;
use rewards_kit::extract::Json;
use rewards_kit::http::service_stack;
use rewards_kit::identity::{Caller, IDENTITY_HEADER, Identity, IdentityKey, Role};
use rewards_kit::testing::TestServer;
use rewards_kit::{Problem, problem::PROBLEM_JSON};
use serde::Deserialize;
use serde_json::{Value, json};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signup {
    username: String,
    #[allow(dead_code)]
    age: u8,
}

async fn panics() -> &'static str {
    panic!("boom")
}

fn key() -> IdentityKey {
    IdentityKey::from_secret(SECRET).unwrap()
}

async fn app() -> TestServer {
    let routes = Router::new()
        .route("/echo", post(|Json(s): Json<Signup>| async move { Json(json!({ "username": s.username })) }))
        .route(
            "/me",
            get(|caller: Caller| async move { Json(json!({ "sub": caller.0.sub, "roles": caller.0.roles })) }),
        )
        .route("/operators-only", get(|caller: Caller| async move { caller.require(&[Role::Operator]).map(|_| "ok") }))
        .route("/panic", get(panics))
        .route(
            "/teapot",
            get(|| async { Err::<(), _>(Problem::conflict(rewards_kit::ProblemCode::Conflict, "taken")) }),
        );
    TestServer::spawn(service_stack("test", routes, key(), 1024)).await
}

async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(response.headers()["content-type"], PROBLEM_JSON, "status {status}");
    assert!(response.headers().contains_key("x-request-id"));
    (status, response.json().await.unwrap())
}

fn alice(roles: Vec<Role>) -> Identity {
    Identity { sub: "u-1".into(), username: "alice".into(), roles }
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_problems() {
    let app = app().await;
    let (status, body) = problem(app.client.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    assert_eq!(body["status"], 404);

    let response = app.client.delete(app.url("/echo")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let (status, body) = problem(response).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("METHOD_NOT_ALLOWED")));
}

#[tokio::test]
async fn bad_bodies_are_4xx_problems_naming_the_field() {
    let app = app().await;
    let post = |body: &'static str| {
        app.client.post(app.url("/echo")).header("content-type", "application/json").body(body).send()
    };

    let (status, body) = problem(post("{\"username\": ").await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("MALFORMED_BODY")));

    let (status, body) = problem(post(r#"{"username": "a", "age": "old"}"#).await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")));
    assert_eq!(body["errors"][0]["field"], "age");

    let (status, body) = problem(post(r#"{"username": "a", "age": 3, "roles": ["ADMIN"]}"#).await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")));
    assert_eq!(body["errors"][0]["field"], "roles");

    let (status, body) = problem(post(r#"{"age": 3}"#).await.unwrap()).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("username")));

    let response = app.client.post(app.url("/echo")).body(r#"{"username":"a","age":1}"#).send().await.unwrap();
    let (status, body) = problem(response).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("UNSUPPORTED_MEDIA_TYPE")));

    let huge = format!(r#"{{"username": "{}", "age": 1}}"#, "x".repeat(4096));
    let response =
        app.client.post(app.url("/echo")).header("content-type", "application/json").body(huge).send().await.unwrap();
    let (status, body) = problem(response).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("PAYLOAD_TOO_LARGE")));

    let ok = post(r#"{"username": "a", "age": 3}"#).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_and_the_server_lives_on() {
    let app = app().await;
    let (status, body) = problem(app.client.get(app.url("/panic")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("INTERNAL")));
    assert!(!body["detail"].as_str().unwrap().contains("boom"), "internals never reach the client");
    let (status, _) = problem(app.client.get(app.url("/teapot")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn request_ids_are_propagated_when_sane_and_generated_otherwise() {
    let app = app().await;
    let kept = app.client.get(app.url("/nowhere")).header("x-request-id", "abc-123.x:y_z").send().await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123.x:y_z");

    let replaced =
        app.client.get(app.url("/nowhere")).header("x-request-id", "bad id with spaces").send().await.unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let long = "a".repeat(129);
    let replaced = app.client.get(app.url("/nowhere")).header("x-request-id", &long).send().await.unwrap();
    assert_ne!(replaced.headers()["x-request-id"], long.as_str());
}

#[tokio::test]
async fn a_protected_route_needs_the_gateways_proof() {
    let app = app().await;

    let (status, body) = problem(app.client.get(app.url("/me")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED")));

    // The headers the old system trusted mean nothing here.
    let forged =
        app.client.get(app.url("/me")).header("x-user-id", "u-1").header("x-user-roles", "ADMIN").send().await.unwrap();
    let (status, _) = problem(forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let garbage = app.client.get(app.url("/me")).header(IDENTITY_HEADER, "v1.1.e30.AAAA").send().await.unwrap();
    assert_eq!(garbage.headers()["www-authenticate"], "Bearer");
    assert_eq!(problem(garbage).await.0, StatusCode::UNAUTHORIZED);

    let wrong_key = IdentityKey::from_secret(b"another-secret-another-secret-xyz").unwrap();
    let proof = wrong_key.sign(&Method::GET, "/me", alice(vec![Role::Admin]));
    let response = app.client.get(app.url("/me")).header(IDENTITY_HEADER, proof).send().await.unwrap();
    assert_eq!(problem(response).await.0, StatusCode::UNAUTHORIZED);

    // A proof made for one path does not open another.
    let proof = key().sign(&Method::GET, "/operators-only", alice(vec![Role::Operator]));
    let response = app.client.get(app.url("/me")).header(IDENTITY_HEADER, proof).send().await.unwrap();
    assert_eq!(problem(response).await.0, StatusCode::UNAUTHORIZED);

    let proof = key().sign(&Method::GET, "/me", alice(vec![Role::User]));
    let response = app.client.get(app.url("/me")).header(IDENTITY_HEADER, proof).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "sub": "u-1", "roles": ["USER"] }));
}

#[tokio::test]
async fn roles_are_enforced_with_403() {
    let app = app().await;
    let call = |roles: Vec<Role>| {
        let proof = key().sign(&Method::GET, "/operators-only", alice(roles));
        app.client.get(app.url("/operators-only")).header(IDENTITY_HEADER, proof).send()
    };
    let (status, body) = problem(call(vec![Role::User]).await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("FORBIDDEN")));
    assert_eq!(problem(call(vec![Role::Auditor]).await.unwrap()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(vec![Role::Operator]).await.unwrap().status(), StatusCode::OK);
    assert_eq!(call(vec![Role::Admin]).await.unwrap().status(), StatusCode::OK);
}
