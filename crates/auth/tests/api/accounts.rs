//! Accounts: signup, registration, lookups, roles, audit — every role, allowed and refused.

use reqwest::{Method, StatusCode};
use rewards_kit::identity::{Identity, Role};
use rewards_kit::store_tests;
use rewards_kit::testing::TestStore;
use serde_json::{Value, json};

use crate::support::*;

store_tests!(
    signup_creates_a_user_without_password_material,
    signup_refuses_bad_input_with_the_field_named,
    usernames_are_unique_in_any_letter_case,
    concurrent_signups_of_one_username_yield_exactly_one_account,
    signup_records_a_known_referrer,
    register_is_for_admins_and_takes_roles,
    users_me_answers_every_signed_in_role,
    listing_users_is_for_admins_filtered_and_paginated,
    getting_one_user_is_for_admins,
    changing_roles_returns_the_user_and_is_audited,
    the_last_admin_keeps_the_role,
    a_demoted_admin_s_token_changes_no_roles_and_registers_no_one,
    a_disabled_account_cannot_sign_in_refresh_or_act,
    the_audit_trail_is_for_auditors_and_admins,
);

async fn signup_creates_a_user_without_password_material(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let response =
        auth.post("/auth/signup", None, json!({ "username": "Player_One", "password": "hunter2hunter2" })).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("argon2") && !text.to_lowercase().contains("password"),
        "{text}"
    );
    let user: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(user["username"], "Player_One");
    assert_eq!(user["roles"], json!(["USER"]));
    assert!(user["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(user["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(user["status"], "ACTIVE");
    assert_eq!(user.as_object().unwrap().len(), 5, "{user}");

    let tokens = auth.tokens("player_one", "hunter2hunter2").await;
    assert_eq!(tokens["user"]["id"], user["id"], "sign-in is case-insensitive on the username");
}

async fn signup_refuses_bad_input_with_the_field_named(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let cases = [
        (json!({ "username": "ab", "password": "password-1" }), "username"),
        (json!({ "username": "has space", "password": "password-1" }), "username"),
        (json!({ "username": "x".repeat(31), "password": "password-1" }), "username"),
        (json!({ "username": "valid_name", "password": "short" }), "password"),
        (json!({ "username": "valid_name", "password": "p".repeat(129) }), "password"),
        (json!({ "username": "valid_name", "password": "password-1", "roles": ["ADMIN"] }), "roles"),
        (json!({ "username": "valid_name", "password": "password-1", "referrer": "nobody_here" }), "referrer"),
        (json!({ "username": "valid_name" }), "password"),
        (json!({ "username": 42, "password": "password-1" }), "username"),
    ];
    for (body, field) in cases {
        let response = auth.post("/auth/signup", None, body.clone()).await;
        let problem = problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        let fields: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&field), "{body} → {problem}");
    }
    let malformed =
        auth.call(Method::POST, "/auth/signup", None).header("content-type", "application/json").body("{\"username\":");
    problem(malformed.send().await.unwrap(), StatusCode::BAD_REQUEST, "MALFORMED_BODY").await;
    // Nothing was created by any of it.
    let admin = auth.admin().await;
    let list: Value = auth.get("/users", Some(&admin)).await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "only the bootstrap admin: {list}");
}

async fn usernames_are_unique_in_any_letter_case(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("Alice", "password-1").await;
    let again = auth.post("/auth/signup", None, json!({ "username": "aLiCe", "password": "password-2" })).await;
    problem(again, StatusCode::CONFLICT, "USERNAME_TAKEN").await;
    let admin = auth.admin().await;
    let registered =
        auth.post("/users/register", Some(&admin), json!({ "username": "ALICE", "password": "password-3" })).await;
    problem(registered, StatusCode::CONFLICT, "USERNAME_TAKEN").await;
}

async fn concurrent_signups_of_one_username_yield_exactly_one_account(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let names = ["racer", "Racer", "RACER", "rAcEr"];
    let results = all_at_once(24, |i| {
        auth.call(Method::POST, "/auth/signup", None)
            .json(&json!({ "username": names[i % names.len()], "password": format!("password-{i}") }))
    })
    .await;
    assert_eq!(count(&results, StatusCode::CREATED, None), 1, "{results:?}");
    assert_eq!(count(&results, StatusCode::CONFLICT, None), 23, "{results:?}");
    assert!(results.iter().filter(|(s, _)| *s == StatusCode::CONFLICT).all(|(_, b)| b["code"] == "USERNAME_TAKEN"));
    let admin = auth.admin().await;
    let found: Value = auth.get("/users?q=racer", Some(&admin)).await.json().await.unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
}

async fn signup_records_a_known_referrer(store: TestStore) {
    let auth = TestAuth::start(store).await;
    auth.signup("inviter", "password-1").await;
    let response = auth
        .post("/auth/signup", None, json!({ "username": "invitee", "password": "password-1", "referrer": "INVITER" }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let record = auth.state.db.user_by_username("invitee").await.unwrap().unwrap();
    let inviter = auth.state.db.user_by_username("inviter").await.unwrap().unwrap();
    assert_eq!(record.referrer_id.as_deref(), Some(inviter.id.as_str()));
}

async fn register_is_for_admins_and_takes_roles(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let body = json!({ "username": "ops_lead", "password": "password-1", "roles": ["OPERATOR", "AUDITOR"] });
    let response = auth.post("/users/register", Some(&admin), body.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["roles"], json!(["OPERATOR", "AUDITOR"]));

    let plain =
        auth.post("/users/register", Some(&admin), json!({ "username": "plain", "password": "password-1" })).await;
    assert_eq!(plain.json::<Value>().await.unwrap()["roles"], json!(["USER"]), "roles default to USER");

    for role in [Role::User, Role::Operator, Role::Auditor] {
        let response = auth.post("/users/register", Some(&someone(&[role])), body.clone()).await;
        problem(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(auth.post("/users/register", None, body.clone()).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;

    for roles in [json!([]), json!(["SERVICE"]), json!(["BOSS"]), json!("ADMIN")] {
        let response = auth
            .post(
                "/users/register",
                Some(&admin),
                json!({ "username": "x_user", "password": "password-1", "roles": roles }),
            )
            .await;
        problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }
}

async fn users_me_answers_every_signed_in_role(store: TestStore) {
    let auth = TestAuth::start(store).await;
    for (name, role) in
        [("u_user", Role::User), ("u_op", Role::Operator), ("u_aud", Role::Auditor), ("u_adm", Role::Admin)]
    {
        let who = auth.user_with(name, &[role]).await;
        let me: Value = auth.get("/users/me", Some(&who)).await.json().await.unwrap();
        assert_eq!((me["username"].as_str(), me["roles"].clone()), (Some(name), json!([role])));
    }
    problem(auth.get("/users/me", None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

async fn listing_users_is_for_admins_filtered_and_paginated(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    for i in 0..23 {
        let roles = if i % 5 == 0 { json!(["OPERATOR"]) } else { json!(["USER"]) };
        let response = auth
            .post(
                "/users/register",
                Some(&admin),
                json!({ "username": format!("player{i:02}"), "password": "password-1", "roles": roles }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        auth.clock.advance(chrono::Duration::milliseconds(1));
    }

    // Walk every page; newest first, nothing lost or repeated.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/users?limit=7&cursor={c}"),
            None => "/users?limit=7".to_owned(),
        };
        let page: Value = auth.get(&path, Some(&admin)).await.json().await.unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..23).rev().map(|i| format!("player{i:02}")).collect();
    expected.push("admin".to_owned());
    assert_eq!(seen, expected);

    let ops: Value = auth.get("/users?role=OPERATOR", Some(&admin)).await.json().await.unwrap();
    let names: Vec<&str> = ops["items"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["player20", "player15", "player10", "player05", "player00"]);
    let q: Value = auth.get("/users?q=YER1", Some(&admin)).await.json().await.unwrap();
    assert_eq!(q["items"].as_array().unwrap().len(), 10, "player10..player19");
    let wild: Value = auth.get("/users?q=%25", Some(&admin)).await.json().await.unwrap();
    assert_eq!(wild["items"].as_array().unwrap().len(), 0, "`%` is matched literally");

    for bad in [
        "/users?role=BOSS",
        "/users?role=SERVICE",
        "/users?limit=0",
        "/users?limit=101",
        "/users?limit=x",
        "/users?cursor=zzz",
        "/users?sort=name",
    ] {
        problem(auth.get(bad, Some(&admin)).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }
    for role in [Role::User, Role::Operator, Role::Auditor] {
        problem(auth.get("/users", Some(&someone(&[role]))).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(auth.get("/users", None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

async fn getting_one_user_is_for_admins(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let created = auth.signup("Findable", "password-1").await;
    let found: Value = auth.get("/users/FINDABLE", Some(&admin)).await.json().await.unwrap();
    assert_eq!(found, created);
    problem(auth.get("/users/nobody_here", Some(&admin)).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    for role in [Role::User, Role::Operator, Role::Auditor] {
        problem(auth.get("/users/findable", Some(&someone(&[role]))).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(auth.get("/users/findable", None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

async fn changing_roles_returns_the_user_and_is_audited(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let user = auth.signup("promotee", "password-1").await;
    let put = |who: Option<&rewards_kit::identity::Identity>, body: Value| {
        auth.call(Method::PUT, "/users/promotee/roles", who).json(&body).send()
    };
    let response = put(Some(&admin), json!({ "roles": ["OPERATOR", "USER", "OPERATOR"] })).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["id"], user["id"]);
    assert_eq!(updated["roles"], json!(["USER", "OPERATOR"]));

    let audit: Value = auth.get("/audit?entity=user", Some(&admin)).await.json().await.unwrap();
    let record = &audit["items"][0];
    assert_eq!(record["entityId"], user["id"]);
    assert_eq!(record["action"], "roles.update");
    assert_eq!(record["actor"], json!({ "id": admin.sub, "username": "admin" }));
    assert_eq!(record["before"], json!({ "roles": ["USER"] }));
    assert_eq!(record["after"], json!({ "roles": ["USER", "OPERATOR"] }));
    assert!(record["at"].as_str().is_some());

    problem(put(Some(&admin), json!({ "roles": [] })).await.unwrap(), StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
        .await;
    problem(
        put(Some(&admin), json!({ "roles": ["SERVICE"] })).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    problem(
        put(Some(&admin), json!({ "role": ["USER"] })).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    let missing = auth.call(Method::PUT, "/users/ghost_user/roles", Some(&admin)).json(&json!({ "roles": ["USER"] }));
    problem(missing.send().await.unwrap(), StatusCode::NOT_FOUND, "NOT_FOUND").await;
    for role in [Role::User, Role::Operator, Role::Auditor] {
        let response = put(Some(&someone(&[role])), json!({ "roles": ["ADMIN"] })).await.unwrap();
        problem(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(put(None, json!({ "roles": ["ADMIN"] })).await.unwrap(), StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let audit: Value = auth.get("/audit", Some(&admin)).await.json().await.unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "refused changes leave no record");
}

async fn the_last_admin_keeps_the_role(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let demote = auth.call(Method::PUT, "/users/admin/roles", Some(&admin)).json(&json!({ "roles": ["USER"] }));
    problem(demote.send().await.unwrap(), StatusCode::CONFLICT, "CONFLICT").await;
    let me: Value = auth.get("/users/me", Some(&admin)).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["ADMIN"]));

    // With a second admin, one of them may step down.
    auth.user_with("second_admin", &[Role::Admin]).await;
    let demote = auth.call(Method::PUT, "/users/admin/roles", Some(&admin)).json(&json!({ "roles": ["USER"] }));
    assert_eq!(demote.send().await.unwrap().status(), StatusCode::OK);
}

async fn the_audit_trail_is_for_auditors_and_admins(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    auth.signup("target_one", "password-1").await;
    let put = auth.call(Method::PUT, "/users/target_one/roles", Some(&admin)).json(&json!({ "roles": ["AUDITOR"] }));
    assert_eq!(put.send().await.unwrap().status(), StatusCode::OK);

    let auditor = someone(&[Role::Auditor]);
    let audit: Value = auth.get("/audit", Some(&auditor)).await.json().await.unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
    let by_actor: Value = auth.get(&format!("/audit?actor={}", admin.sub), Some(&auditor)).await.json().await.unwrap();
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 1);
    let by_other: Value = auth.get("/audit?actor=someone-else", Some(&auditor)).await.json().await.unwrap();
    assert_eq!(by_other["items"].as_array().unwrap().len(), 0);
    let other_entity: Value = auth.get("/audit?entity=event", Some(&auditor)).await.json().await.unwrap();
    assert_eq!(other_entity["items"].as_array().unwrap().len(), 0);
    for role in [Role::User, Role::Operator] {
        problem(auth.get("/audit", Some(&someone(&[role]))).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
    problem(auth.get("/audit", None).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

/// The attack run's finding: an ADMIN demoted to USER, still holding a token
/// that says ADMIN, re-promoted itself, demoted the original admin and
/// registered a new ADMIN. The store's roles decide now: each is 403, and
/// nothing changed.
async fn a_demoted_admin_s_token_changes_no_roles_and_registers_no_one(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let adm4 = auth.user_with("adm4", &[Role::Admin]).await;
    assert_eq!(adm4.roles, [Role::Admin], "the identity its token carries");
    let demote = auth.call(Method::PUT, "/users/adm4/roles", Some(&admin)).json(&json!({ "roles": ["USER"] }));
    assert_eq!(demote.send().await.unwrap().status(), StatusCode::OK);

    let promote_self = auth.call(Method::PUT, "/users/adm4/roles", Some(&adm4)).json(&json!({ "roles": ["ADMIN"] }));
    problem(promote_self.send().await.unwrap(), StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let demote_admin = auth.call(Method::PUT, "/users/admin/roles", Some(&adm4)).json(&json!({ "roles": ["USER"] }));
    problem(demote_admin.send().await.unwrap(), StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let register = auth
        .post(
            "/users/register",
            Some(&adm4),
            json!({ "username": "adm5", "password": "password-123", "roles": ["ADMIN"] }),
        )
        .await;
    problem(register, StatusCode::FORBIDDEN, "FORBIDDEN").await;

    let user = |name: &'static str| {
        let auth = &auth;
        let admin = admin.clone();
        async move { auth.get(&format!("/users/{name}"), Some(&admin)).await.json::<Value>().await.unwrap() }
    };
    assert_eq!(user("adm4").await["roles"], json!(["USER"]));
    assert_eq!(user("admin").await["roles"], json!(["ADMIN"]));
    assert_eq!(auth.get("/users/adm5", Some(&admin)).await.status(), StatusCode::NOT_FOUND);

    // The one registration that happened is in the audit trail.
    let audit: Value = auth.get("/audit", Some(&admin)).await.json().await.unwrap();
    let registered: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "user.register").collect();
    assert_eq!(registered.len(), 1, "{audit}");
    assert_eq!(registered[0]["entityId"], adm4.sub.as_str());
    assert_eq!(registered[0]["actor"]["username"], "admin");
    assert_eq!(registered[0]["after"], json!({ "username": "adm4", "roles": ["ADMIN"] }));
}

/// `PUT /users/{username}/status`: a disabled account cannot sign in (403
/// once the password is right), its sessions end, a disabled ADMIN's token
/// changes nothing, the last active ADMIN stays; re-enabled, it signs in.
async fn a_disabled_account_cannot_sign_in_refresh_or_act(store: TestStore) {
    let auth = TestAuth::start(store).await;
    let admin = auth.admin().await;
    let helper = auth.user_with("helper", &[Role::Admin]).await;
    auth.signup("cheater", "password-1").await;
    let session = auth.tokens("cheater", "password-1").await;
    let status = |who: &Identity, name: &str, status: Value| {
        auth.call(Method::PUT, &format!("/users/{name}/status"), Some(who)).json(&json!({ "status": status }))
    };

    let operator = someone(&[Role::Operator]);
    problem(status(&operator, "cheater", json!("DISABLED")).send().await.unwrap(), StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    problem(
        status(&admin, "cheater", json!("GONE")).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    problem(status(&admin, "nobody", json!("DISABLED")).send().await.unwrap(), StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;

    let disabled = status(&admin, "cheater", json!("DISABLED")).send().await.unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    assert_eq!(disabled.json::<Value>().await.unwrap()["status"], "DISABLED");
    problem(auth.login("cheater", "password-1").await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    problem(auth.login("cheater", "password-2").await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let stale = auth.post("/auth/refresh", None, json!({ "refresh_token": session["refresh_token"] })).await;
    problem(stale, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let gateway = Identity::service("gateway");
    let feed: Value = auth.get("/revocations", Some(&gateway)).await.json().await.unwrap();
    assert!(feed["items"].as_array().unwrap().iter().any(|i| i["userId"] == session["user"]["id"]), "{feed}");

    // A disabled ADMIN's token changes nothing; the last active ADMIN stays.
    assert_eq!(status(&admin, "helper", json!("DISABLED")).send().await.unwrap().status(), StatusCode::OK);
    let promote = auth.call(Method::PUT, "/users/cheater/roles", Some(&helper)).json(&json!({ "roles": ["ADMIN"] }));
    problem(promote.send().await.unwrap(), StatusCode::FORBIDDEN, "FORBIDDEN").await;
    problem(status(&helper, "cheater", json!("ACTIVE")).send().await.unwrap(), StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    problem(status(&admin, "admin", json!("DISABLED")).send().await.unwrap(), StatusCode::CONFLICT, "CONFLICT").await;

    let enabled = status(&admin, "cheater", json!("ACTIVE")).send().await.unwrap();
    assert_eq!(enabled.json::<Value>().await.unwrap()["status"], "ACTIVE");
    assert_eq!(auth.login("cheater", "password-1").await.status(), StatusCode::OK);
    let audit: Value = auth.get("/audit", Some(&admin)).await.json().await.unwrap();
    let changes: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "status.update")
        .map(|e| (e["before"]["status"].as_str().unwrap(), e["after"]["status"].as_str().unwrap()))
        .collect();
    assert_eq!(changes, [("DISABLED", "ACTIVE"), ("ACTIVE", "DISABLED"), ("ACTIVE", "DISABLED")], "newest first");
}
