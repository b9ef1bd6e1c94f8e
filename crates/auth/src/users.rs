//! Accounts: signup, registration by an ADMIN, lookups, role changes, and
//! the audit trail of those changes.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rewards_kit::audit::{AuditFilter, AuditView};
use rewards_kit::extract::{Json, Path, Query};
use rewards_kit::identity::{Caller, Role};
use rewards_kit::page::{Cursor, Page, PageRequest};
use rewards_kit::problem::{FieldError, ProblemCode};
use rewards_kit::{Problem, problem::ProblemSchema};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::store::{NewUser, StoreError, UserRecord};

/// A user as the API shows it. No password material, ever.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub roles: Vec<Role>,
    /// `ACTIVE`, or `DISABLED` by an ADMIN.
    pub status: AccountStatus,
    pub created_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.clone(),
            username: user.username.clone(),
            roles: user.roles(),
            status: if user.is_active() { AccountStatus::Active } else { AccountStatus::Disabled },
            created_at: user.created_at(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccountStatus {
    Active,
    Disabled,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub status: AccountStatus,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// 3–30 letters, digits, `_`, `-` or `.`; unique in any letter case.
    pub username: String,
    /// 8–128 characters.
    pub password: String,
    /// The inviting user's username.
    #[serde(default)]
    pub referrer: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    /// Default `[USER]`.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesRequest {
    /// Non-empty; `USER`, `OPERATOR`, `AUDITOR`, `ADMIN`.
    pub roles: Vec<Role>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    /// Only holders of this role.
    pub role: Option<String>,
    /// Usernames containing this text (any case).
    pub q: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records about this kind of entity (`user`).
    pub entity: Option<String>,
    /// Only changes made by this user id.
    pub actor: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The username rule: 3–30 of letters, digits, `_`, `-`, `.`.
pub fn check_username(username: &str) -> Result<(), FieldError> {
    let len = username.chars().count();
    let ok_chars = username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !(3..=30).contains(&len) {
        Err(FieldError::new("username", "must be 3 to 30 characters long"))
    } else if !ok_chars {
        Err(FieldError::new("username", "may contain only letters, digits, `_`, `-` and `.`"))
    } else {
        Ok(())
    }
}

/// The password rule: 8–128 characters.
pub fn check_password(password: &str) -> Result<(), Problem> {
    let len = password.chars().count();
    if (8..=128).contains(&len) {
        Ok(())
    } else {
        Err(Problem::invalid_field("password", "must be 8 to 128 characters long"))
    }
}

/// Roles a user account may hold: non-empty, no internal `SERVICE` role.
fn check_roles(roles: &[Role]) -> Result<(), FieldError> {
    if roles.is_empty() {
        return Err(FieldError::new("roles", "must name at least one role"));
    }
    if roles.contains(&Role::Service) {
        return Err(FieldError::new("roles", "SERVICE is reserved for internal services"));
    }
    Ok(())
}

/// Validates username and password together, so a client learns every problem at once.
fn check_credentials(username: &str, password: &str, extra: Option<FieldError>) -> Result<(), Problem> {
    let mut errors: Vec<FieldError> = Vec::new();
    errors.extend(check_username(username).err());
    if let Err(p) = check_password(password) {
        errors.extend(p.errors.clone());
    }
    errors.extend(extra);
    if errors.is_empty() { Ok(()) } else { Err(Problem::fields(errors)) }
}

fn taken(username: &str) -> Problem {
    Problem::conflict(ProblemCode::UsernameTaken, format!("the username `{username}` is taken"))
}

async fn create_user(
    state: &AppState,
    username: &str,
    password: String,
    roles: &[Role],
    referrer_id: Option<&str>,
    announce: bool,
    registered_by: Option<(&str, &str)>,
) -> Result<UserRecord, Problem> {
    let hash = state.passwords.hash(password).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let now = state.clock.now();
    let new = NewUser { id: &id, username, password_hash: &hash, roles, referrer_id, now, announce, registered_by };
    match state.db.insert_user(new).await {
        Ok(user) => Ok(user),
        Err(StoreError::UsernameTaken) => Err(taken(username)),
        Err(err) => Err(Problem::internal_from(err)),
    }
}

/// Create a player account (always `USER`).
#[utoipa::path(post, path = "/auth/signup", tag = "accounts", request_body = SignupRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid fields, unknown referrer, or a `roles` field", body = ProblemSchema),
        (status = 409, description = "USERNAME_TAKEN", body = ProblemSchema),
        (status = 429, description = "Too many sign-ups from the address, or naming the referrer", body = ProblemSchema),
        (status = 503, description = "Too many sign-ups at once", body = ProblemSchema),
    ))]
pub async fn signup(
    State(state): State<AppState>,
    addr: Option<axum::Extension<rewards_kit::identity::ClientAddr>>,
    Json(body): Json<SignupRequest>,
) -> Result<(StatusCode, Json<UserView>), Problem> {
    check_credentials(&body.username, &body.password, None)?;
    let referrer = match body.referrer.as_deref() {
        Some(name) => Some(
            state
                .db
                .user_by_username(name)
                .await?
                .ok_or_else(|| Problem::invalid_field("referrer", format!("no user is called `{name}`")))?,
        ),
        None => None,
    };
    let referrer_id = referrer.as_ref().map(|r| r.id.as_str());
    let addr = addr.map(|axum::Extension(rewards_kit::identity::ClientAddr(ip))| ip);
    state.signups.admit(addr, referrer_id, state.clock.now())?;
    let user = create_user(&state, &body.username, body.password, &[Role::User], referrer_id, true, None).await?;
    tracing::info!(user_id = %user.id, "signed up");
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// Create an account with roles (ADMIN).
#[utoipa::path(post, path = "/users/register", tag = "accounts", request_body = RegisterRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid fields", body = ProblemSchema),
        (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema),
        (status = 409, description = "USERNAME_TAKEN", body = ProblemSchema),
    ))]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<UserView>), Problem> {
    caller.require(&[Role::Admin])?;
    require_admin_in_store(&state, &caller).await?;
    let roles = body.roles.unwrap_or_else(|| vec![Role::User]);
    check_credentials(&body.username, &body.password, check_roles(&roles).err())?;
    let user = create_user(
        &state,
        &body.username,
        body.password,
        &roles,
        None,
        false,
        Some((&caller.0.sub, &caller.0.username)),
    )
    .await?;
    tracing::info!(user_id = %user.id, by = %caller.0.sub, "registered");
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// The caller's own account.
#[utoipa::path(get, path = "/users/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserView>, Problem> {
    let user = state.db.user_by_id(&caller.0.sub).await?.ok_or_else(|| Problem::not_found("no such account"))?;
    Ok(Json(UserView::from(&user)))
}

/// List accounts, newest first (ADMIN).
#[utoipa::path(get, path = "/users", tag = "accounts", params(UserListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<UserView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<UserListQuery>,
) -> Result<Json<Page<UserView>>, Problem> {
    caller.require(&[Role::Admin])?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let role = match query.role.as_deref() {
        Some(text) => Some(
            text.parse::<Role>()
                .ok()
                .filter(|r| *r != Role::Service)
                .ok_or_else(|| Problem::invalid_field("role", "must be USER, OPERATOR, AUDITOR or ADMIN"))?,
        ),
        None => None,
    };
    if query.q.as_deref().is_some_and(|q| q.chars().count() > 30) {
        return Err(Problem::invalid_field("q", "at most 30 characters"));
    }
    let rows = state.db.list_users(role, query.q.as_deref(), &page).await?;
    let page = Page::from_rows(rows, &page, |u| Cursor { at: u.created_at, id: u.id.clone() });
    Ok(Json(page.map(|u| UserView::from(&u))))
}

/// One account by username (ADMIN).
#[utoipa::path(get, path = "/users/{username}", tag = "accounts", security(("bearer" = [])),
    params(("username" = String, Path, description = "Any letter case")),
    responses((status = 200, body = UserView), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<UserView>, Problem> {
    caller.require(&[Role::Admin])?;
    let user = state.db.user_by_username(&username).await?.ok_or_else(|| no_user(&username))?;
    Ok(Json(UserView::from(&user)))
}

/// The caller's token says ADMIN; so must the store, for the changes that
/// make or unmake ADMINs (a demoted ADMIN's token lives on until it expires).
async fn require_admin_in_store(state: &AppState, caller: &Caller) -> Result<(), Problem> {
    let current = state.db.user_by_id(&caller.0.sub).await?;
    let admin = current.is_some_and(|user| user.is_active() && user.roles().contains(&Role::Admin));
    if admin { Ok(()) } else { Err(no_longer_admin()) }
}

pub(crate) fn no_longer_admin() -> Problem {
    Problem::forbidden("your account is no longer an active ADMIN")
}

/// Disable or re-enable an account (ADMIN). A disabled account cannot sign
/// in or refresh, and every gateway refuses its access tokens within a
/// second. The last active ADMIN cannot be disabled.
#[utoipa::path(put, path = "/users/{username}/status", tag = "accounts", request_body = StatusRequest,
    security(("bearer" = [])), params(("username" = String, Path, description = "Any letter case")),
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema),
        (status = 404, body = ProblemSchema), (status = 409, description = "Would leave no active ADMIN", body = ProblemSchema),
    ))]
pub async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    Json(body): Json<StatusRequest>,
) -> Result<Json<UserView>, Problem> {
    let actor = caller.require(&[Role::Admin])?;
    let active = body.status == AccountStatus::Active;
    match state.db.set_status(&username, active, (&actor.sub, &actor.username), state.clock.now()).await {
        Ok((before, after)) => {
            tracing::info!(user_id = %after.id, before = %before.status, after = %after.status, by = %actor.sub, "account status changed");
            Ok(Json(UserView::from(&after)))
        }
        Err(err) => Err(refused_change(err, &username, "at least one active account must keep the ADMIN role")),
    }
}

/// Why the store refused an ADMIN's change to an account; `last_admin` says
/// what a change that would leave no ADMIN breaks.
fn refused_change(err: StoreError, username: &str, last_admin: &str) -> Problem {
    match err {
        StoreError::NotFound => no_user(username),
        StoreError::LastAdmin => Problem::conflict(ProblemCode::Conflict, last_admin),
        StoreError::ActorNotAdmin => no_longer_admin(),
        err => Problem::internal_from(err),
    }
}

fn no_user(username: &str) -> Problem {
    Problem::not_found(format!("no user is called `{username}`"))
}

/// Replace an account's roles (ADMIN). The last ADMIN cannot lose the role.
#[utoipa::path(put, path = "/users/{username}/roles", tag = "accounts", request_body = RolesRequest,
    security(("bearer" = [])), params(("username" = String, Path, description = "Any letter case")),
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema),
        (status = 404, body = ProblemSchema), (status = 409, description = "Would leave no ADMIN", body = ProblemSchema),
    ))]
pub async fn set_roles(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    Json(body): Json<RolesRequest>,
) -> Result<Json<UserView>, Problem> {
    let actor = caller.require(&[Role::Admin])?;
    check_roles(&body.roles).map_err(|e| Problem::invalid_field(e.field, e.message))?;
    match state.db.set_roles(&username, &body.roles, (&actor.sub, &actor.username), state.clock.now()).await {
        Ok((before, after)) => {
            tracing::info!(user_id = %after.id, before = %before.roles, after = %after.roles, by = %actor.sub, "roles changed");
            Ok(Json(UserView::from(&after)))
        }
        Err(err) => Err(refused_change(err, &username, "at least one account must keep the ADMIN role")),
    }
}

/// The audit trail of account changes, newest first (AUDITOR, ADMIN).
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<AuditView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema)))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Page<AuditView>>, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let filter = AuditFilter { entity: query.entity.as_deref(), entity_id: None, actor: query.actor.as_deref() };
    let rows = rewards_kit::audit::list(state.db.inner(), filter, &page).await?;
    let page = Page::from_rows(rows, &page, |r| Cursor { at: r.created_at, id: r.id.clone() });
    Ok(Json(page.map(AuditView::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        for ok in ["abc", "Player_One", "a.b-c", &"x".repeat(30)] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", &"x".repeat(31), "has space", "émile", "semi;colon", ""] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"p".repeat(128)).is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"p".repeat(129)).is_err());
        assert!(check_password("пароль12").is_ok(), "characters, not bytes");
    }

    #[test]
    fn every_field_error_is_reported_at_once() {
        let err = check_credentials("a", "short", check_roles(&[]).err()).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["username", "password", "roles"]);
        assert!(check_roles(&[Role::Service]).is_err());
    }
}
