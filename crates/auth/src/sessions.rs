//! Sessions: login, refresh-token rotation, logout, and the public keys.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rewards_kit::extract::Json;
use rewards_kit::identity::{Caller, ClientAddr};
use rewards_kit::{Problem, problem::ProblemSchema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::AppState;
use crate::keys::AccessClaims;
use crate::store::{Rotation, UserRecord};
use crate::users::UserView;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// OAuth 2.0 token response field names, as the old system answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: UserView,
}

/// A new opaque refresh token and the hash under which it is stored.
fn new_refresh_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = B64.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn bad_credentials() -> Problem {
    Problem::unauthenticated("invalid username or password")
}

fn refused_refresh() -> Problem {
    Problem::unauthenticated("the refresh token is invalid, expired or revoked; sign in again")
}

/// Signs an access token for `user` and pairs it with `refresh_token`.
async fn tokens(state: &AppState, user: &UserRecord, refresh_token: String) -> Result<TokenResponse, Problem> {
    let now = state.clock.now();
    let ttl = state.settings.access_ttl();
    let claims = AccessClaims {
        sub: user.id.clone(),
        username: user.username.clone(),
        roles: user.roles(),
        iss: state.settings.issuer.clone(),
        aud: state.settings.audience.clone(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: (now + ttl).timestamp(),
        jti: uuid::Uuid::now_v7().to_string(),
        tv: user.token_version,
    };
    let access_token = state.keys.sign(&claims).await?;
    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.settings.access_token_ttl_secs,
        user: UserView::from(user),
    })
}

/// Sign in: an access token and a refresh token.
#[utoipa::path(post, path = "/auth/login", tag = "sessions", request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, body = ProblemSchema),
        (status = 401, description = "Bad credentials", body = ProblemSchema),
        (status = 429, description = "Too many failures; see Retry-After", body = ProblemSchema),
        (status = 503, description = "Too many sign-ins at once; see Retry-After", body = ProblemSchema),
    ))]
pub async fn login(
    State(state): State<AppState>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<LoginRequest>,
) -> Result<Json<TokenResponse>, Problem> {
    let addr = addr.map(|Extension(ClientAddr(ip))| ip);
    let now = state.clock.now();
    state.throttle.check(&body.username, addr, now)?;

    let user = state.db.user_by_username(&body.username).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    if !state.passwords.verify(body.password, hash).await? {
        state.throttle.record_failure(&body.username, addr, now);
        tracing::info!(client = ?addr, "failed sign-in");
        return Err(bad_credentials());
    }
    let user = user.ok_or_else(bad_credentials)?;
    state.throttle.record_success(&body.username, addr);
    if !user.is_active() {
        // Told only to whoever knows the password.
        return Err(Problem::forbidden("this account is disabled"));
    }

    let (refresh_token, refresh_hash) = new_refresh_token();
    state.db.create_session(&user.id, &refresh_hash, now, now + state.settings.refresh_ttl()).await?;
    tracing::info!(user_id = %user.id, "signed in");
    Ok(Json(tokens(&state, &user, refresh_token).await?))
}

/// Trade a refresh token for a new pair. The presented token is spent; a
/// spent token presented again revokes every token of its session.
#[utoipa::path(post, path = "/auth/refresh", tag = "sessions", request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, body = ProblemSchema),
        (status = 401, description = "Unknown, expired, spent or revoked", body = ProblemSchema),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>, Problem> {
    let now = state.clock.now();
    let (new_token, new_hash) = new_refresh_token();
    let presented = hash_refresh_token(&body.refresh_token);
    match state.db.rotate_refresh(&presented, &new_hash, now, now + state.settings.refresh_ttl()).await? {
        // Disabling revokes the sessions; this holds if one raced it.
        Rotation::Rotated { user, .. } if !user.is_active() => Err(refused_refresh()),
        Rotation::Rotated { user, .. } => Ok(Json(tokens(&state, &user, new_token).await?)),
        Rotation::Replayed { family_id } => {
            tracing::warn!(family_id, "a spent refresh token was presented again; its session is revoked");
            Err(refused_refresh())
        }
        Rotation::Refused => Err(refused_refresh()),
    }
}

/// Sign out: revokes the session the refresh token belongs to.
#[utoipa::path(post, path = "/auth/logout", tag = "sessions", request_body = RefreshRequest,
    security(("bearer" = [])),
    responses((status = 204, description = "Signed out (also when the token was already invalid)"),
        (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema)))]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<RefreshRequest>,
) -> Result<StatusCode, Problem> {
    let revoked =
        state.db.revoke_session(&hash_refresh_token(&body.refresh_token), &caller.0.sub, state.clock.now()).await?;
    if revoked {
        tracing::info!(user_id = %caller.0.sub, "signed out");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens, by `kid`.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "sessions",
    responses((status = 200, description = "A JSON Web Key Set of Ed25519 keys")))]
pub async fn jwks(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let ring = state.keys.ring().await?;
    Ok(Json(ring.jwks(state.clock.now(), state.settings.access_ttl())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevocationsQuery {
    /// Revocations at or after this instant (microseconds since the epoch);
    /// 0 for all.
    pub since: Option<i64>,
}

/// A user whose tokens of an older version are refused.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub user_id: String,
    /// Tokens whose `tv` is below this are refused.
    pub token_version: i64,
    /// When (microseconds since the epoch).
    pub at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocations {
    pub items: Vec<Revocation>,
    /// Ask again with `since` a little before this (a revocation stamped
    /// earlier may commit later), until an answer comes back not full.
    pub until: i64,
    /// Whether more revocations follow `until`.
    pub more: bool,
    /// Every revoked signing key: tokens naming one are refused.
    pub revoked_keys: Vec<String>,
}

/// Most revocations in one answer.
const REVOCATIONS_PAGE: i64 = 1_000;

/// The revocation feed the gateways follow (internal services only): the
/// users whose earlier access tokens no gateway may accept any more.
#[utoipa::path(get, path = "/revocations", tag = "sessions", params(RevocationsQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Revocations), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema)))]
pub async fn revocations(
    State(state): State<AppState>,
    caller: Caller,
    rewards_kit::extract::Query(query): rewards_kit::extract::Query<RevocationsQuery>,
) -> Result<Json<Revocations>, Problem> {
    caller.require(&[rewards_kit::identity::Role::Service])?;
    let since = query.since.unwrap_or(0).max(0);
    let rows = state.db.revocations(since, REVOCATIONS_PAGE).await?;
    let until = rows.last().map_or(since, |(_, _, at)| *at);
    let more = rows.len() as i64 == REVOCATIONS_PAGE;
    let items =
        rows.into_iter().map(|(user_id, token_version, at)| Revocation { user_id, token_version, at }).collect();
    let revoked_keys = state.db.revoked_kids().await?;
    Ok(Json(Revocations { items, until, more, revoked_keys }))
}

/// Sign out everywhere: every session of the user ends and every gateway
/// refuses its earlier access tokens within a second. ADMIN for anyone;
/// anyone signed in for `me`.
#[utoipa::path(delete, path = "/users/{username}/sessions", tag = "sessions", security(("bearer" = [])),
    params(("username" = String, Path, description = "Any letter case, or `me`")),
    responses((status = 204, description = "Signed out everywhere"), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(username): axum::extract::Path<String>,
) -> Result<StatusCode, Problem> {
    let actor = &caller.0;
    let username = if username == "me" {
        actor.username.clone()
    } else {
        caller.require(&[rewards_kit::identity::Role::Admin])?;
        username
    };
    let actor_pair = (actor.sub.as_str(), actor.username.as_str());
    match state.db.revoke_all_sessions(&username, actor_pair, state.clock.now()).await? {
        Some(user) => {
            tracing::info!(user_id = %user.id, by = %actor.sub, "signed out everywhere");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(Problem::not_found(format!("no user is called `{username}`"))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Change one's own password, proving the current one. Every session of the
/// user ends — this one too: the identity a gateway vouches for does not
/// name the session, so none can be told apart — and every gateway refuses
/// the user's earlier access tokens within a second; sign in again with the
/// new password.
#[utoipa::path(post, path = "/users/me/password", tag = "sessions", request_body = PasswordChange,
    security(("bearer" = [])),
    responses((status = 204, description = "Changed; every session ended"), (status = 400, body = ProblemSchema),
        (status = 401, description = "Not signed in, or the current password is wrong", body = ProblemSchema),
        (status = 429, body = ProblemSchema)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<PasswordChange>,
) -> Result<StatusCode, Problem> {
    crate::users::check_password(&body.new_password)
        .map_err(|_| Problem::invalid_field("newPassword", "must be 8 to 128 characters long"))?;
    let addr = addr.map(|Extension(ClientAddr(ip))| ip);
    let now = state.clock.now();
    let user = state.db.user_by_id(&caller.0.sub).await?.ok_or_else(bad_credentials)?;
    // The current password is a sign-in: throttled as one.
    state.throttle.check(&user.username, addr, now)?;
    if !state.passwords.verify(body.current_password, Some(user.password_hash.clone())).await? {
        state.throttle.record_failure(&user.username, addr, now);
        return Err(Problem::unauthenticated("the current password is wrong"));
    }
    let hash = state.passwords.hash(body.new_password).await?;
    if !state.db.change_password(&user.id, &hash, now).await? {
        return Err(bad_credentials());
    }
    tracing::info!(user_id = %user.id, "password changed; every session ended");
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke a signing key (ADMIN): it signs and is published no more, and
/// every gateway refuses the tokens it signed at once (within a second).
/// Revoking the key that signs now puts a fresh one in its place.
#[utoipa::path(post, path = "/keys/{kid}/revoke", tag = "sessions", security(("bearer" = [])),
    params(("kid" = String, Path, description = "The key id, as in the JWKS and tokens' headers")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 404, description = "No such key, or revoked before", body = ProblemSchema)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(kid): axum::extract::Path<String>,
) -> Result<StatusCode, Problem> {
    let actor = caller.require(&[rewards_kit::identity::Role::Admin])?;
    let now = state.clock.now();
    let successor = crate::keys::generate_key(now, now);
    match state.db.revoke_key(&kid, &successor, (&actor.sub, &actor.username), now).await {
        Ok(replaced) => {
            state.keys.reload().await?;
            tracing::warn!(%kid, replaced, by = %actor.sub, "signing key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(crate::store::StoreError::NotFound) => Err(Problem::not_found(format!("no live signing key `{kid}`"))),
        Err(crate::store::StoreError::ActorNotAdmin) => Err(crate::users::no_longer_admin()),
        Err(err) => Err(Problem::internal_from(err)),
    }
}
