//! Reward claims: the rule in the contract's order, decided by the database.
//!
//! `POST /reward-claims` answers: 404 (no such event, or the reward is not
//! its) → 400 `EVENT_NOT_ACTIVE` → 409 `DUPLICATE_CLAIM` → 400
//! `CONDITION_NOT_MET` (recorded as one `REJECTED` claim per player and
//! reward, refreshed on retries) → 409 `OUT_OF_STOCK` → 201. The decisive
//! steps run in one transaction: the claim takes one of the reward's per-user
//! slots (a unique index on user, reward and slot: no player ever holds more
//! than `perUserLimit` live claims), stock is taken by a guarded decrement
//! (`remaining > 0`: never below zero, one unit per grant), the transition and
//! the payout are recorded, and the idempotency key's answer is stored — all
//! committed together, and only then does the client hear 201.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rewards_kit::clock::{from_micros, to_micros};
use rewards_kit::extract::{Json, Path, Query};
use rewards_kit::identity::{Caller, Identity, Role};
use rewards_kit::page::{Cursor, Page, PageRequest, keyset_condition};
use rewards_kit::problem::{FieldError, PROBLEM_JSON, ProblemCode, ProblemSchema};
use rewards_kit::{Problem, with_pool, with_write_tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::batch::{self, TransitionRow};
use crate::commit::{Announced, Grant, Outcome};
use crate::condition::Condition;
use crate::evaluator::Ledger;
use crate::targets::Target;

pub const STATUSES: [&str; 6] = ["PENDING", "APPROVED", "REJECTED", "PAID", "FAILED", "CANCELLED"];
/// How long an idempotency key's answer is kept.
pub const KEY_TTL: chrono::Duration = chrono::Duration::hours(24);
/// A key still "in progress" after this long belongs to a request that died
/// before its transaction committed (a committed claim stores its answer in
/// that transaction): it is taken over.
pub const KEY_LEASE: chrono::Duration = chrono::Duration::seconds(30);

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimRow {
    pub id: String,
    pub user_id: String,
    pub event_id: String,
    pub reward_id: String,
    pub slot: Option<i64>,
    pub status: String,
    pub reason: Option<String>,
    pub reward: String,
    pub created_at: i64,
    pub processed_at: Option<i64>,
    pub updated_at: i64,
}

pub(crate) const CLAIM_COLUMNS: &str =
    "id, user_id, event_id, reward_id, slot, status, reason, reward, created_at, processed_at, updated_at";

/// A claim as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    pub id: String,
    pub user_id: String,
    pub event_id: String,
    pub reward_id: String,
    /// `PENDING`, `APPROVED`, `REJECTED`, `PAID`, `FAILED` or `CANCELLED`.
    pub status: String,
    /// `{name, type, details, quantity}` as claimed.
    #[schema(value_type = Object)]
    pub reward: Value,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

impl ClaimView {
    pub fn from_row(row: &ClaimRow) -> Self {
        Self {
            id: row.id.clone(),
            user_id: row.user_id.clone(),
            event_id: row.event_id.clone(),
            reward_id: row.reward_id.clone(),
            status: row.status.clone(),
            reward: serde_json::from_str(&row.reward).unwrap_or(Value::Null),
            reason: row.reason.clone(),
            created_at: from_micros(row.created_at),
            processed_at: row.processed_at.map(from_micros),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimRequest {
    pub event_id: String,
    pub reward_id: String,
}

/// The answer of a claim attempt, as stored for its idempotency key.
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn of_problem(problem: &Problem) -> Self {
        Self { status: problem.status, body: problem.to_json() }
    }

    fn into_response(self) -> Response {
        let content_type = if self.status.is_success() { "application/json" } else { PROBLEM_JSON };
        (self.status, [(axum::http::header::CONTENT_TYPE, content_type)], self.body).into_response()
    }
}

/// An `Idempotency-Key`: 1 to 255 visible characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Problem::invalid_field("Idempotency-Key", "1 to 255 visible ASCII characters")),
    }
}

/// An idempotency key's row: request hash, answer (status, body), expiry, creation.
type KeyRow = (String, Option<i64>, Option<String>, i64, i64);

enum KeyState {
    Fresh,
    Replay(Answer),
}

/// Claims the key for this request, or tells what became of it.
async fn begin_key(state: &AppState, user: &str, key: &str, hash: &str) -> Result<KeyState, Problem> {
    let now = to_micros(state.clock.now());
    let expires = to_micros(state.clock.now() + KEY_TTL);
    let insert = "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at, expires_at) \
                  VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
    let select = "SELECT request_hash, response_status, response_body, expires_at, created_at FROM idempotency_keys \
                  WHERE user_id = $1 AND key = $2";
    let expire = "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND expires_at < $3";
    let abandoned =
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND response_status IS NULL AND created_at < $3";
    let lease_start = to_micros(state.clock.now() - KEY_LEASE);
    for _ in 0..2 {
        let inserted = with_pool!(state.store(), |pool| {
            sqlx::query(insert)
                .bind(user)
                .bind(key)
                .bind(hash)
                .bind(now)
                .bind(expires)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if inserted == 1 {
            return Ok(KeyState::Fresh);
        }
        let row: Option<KeyRow> = with_pool!(state.store(), |pool| {
            sqlx::query_as(select).bind(user).bind(key).fetch_optional(pool).await
        })?;
        let Some((stored_hash, status, body, expires_at, created_at)) = row else { continue };
        if expires_at < now {
            with_pool!(state.store(), |pool| {
                sqlx::query(expire).bind(user).bind(key).bind(now).execute(pool).await.map(drop)
            })?;
            continue;
        }
        if status.is_none() && created_at < lease_start {
            with_pool!(state.store(), |pool| {
                sqlx::query(abandoned).bind(user).bind(key).bind(lease_start).execute(pool).await.map(drop)
            })?;
            continue;
        }
        if stored_hash != hash {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ));
        }
        return match (status, body) {
            (Some(status), Some(body)) => Ok(KeyState::Replay(Answer {
                status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            })),
            _ => Err(Problem::conflict(
                ProblemCode::IdempotencyInProgress,
                "a request with this Idempotency-Key is still being processed",
            )),
        };
    }
    Err(Problem::unavailable("the idempotency key is changing hands; try again", 1))
}

async fn finish_key(state: &AppState, user: &str, key: &str, answer: &Answer) -> Result<(), sqlx::Error> {
    let sql = "UPDATE idempotency_keys SET response_status = $1, response_body = $2 WHERE user_id = $3 AND key = $4";
    with_pool!(state.store(), |pool| {
        sqlx::query(sql)
            .bind(i64::from(answer.status.as_u16()))
            .bind(&answer.body)
            .bind(user)
            .bind(key)
            .execute(pool)
            .await
            .map(drop)
    })
}

/// Forgets a key whose request failed on our side, so the client may retry.
async fn abandon_key(state: &AppState, user: &str, key: &str) {
    let sql = "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND response_status IS NULL";
    let _ = with_pool!(state.store(), |pool| sqlx::query(sql).bind(user).bind(key).execute(pool).await.map(drop));
}

/// Claim a reward (USER, ADMIN). `Idempotency-Key` makes a retry safe.
#[utoipa::path(post, path = "/reward-claims", tag = "claims", request_body = ClaimRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key, scoped to the caller")),
    responses(
        (status = 201, body = ClaimView),
        (status = 400, description = "EVENT_NOT_ACTIVE, CONDITION_NOT_MET or invalid input", body = ProblemSchema),
        (status = 404, body = ProblemSchema),
        (status = 409, description = "DUPLICATE_CLAIM, OUT_OF_STOCK or IDEMPOTENCY_IN_PROGRESS", body = ProblemSchema),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = ProblemSchema),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<ClaimRequest>,
) -> Result<Response, Problem> {
    let who = caller.require(&[Role::User, Role::Admin])?.clone();
    let key = idempotency_key(&headers)?;
    let Some(key) = key else {
        return Ok(match claim(&state, &who, &body, None).await {
            Ok(answer) => answer.into_response(),
            Err(problem) => problem.into_response(),
        });
    };
    let hash = hex_sha256(&serde_json::to_string(&body).unwrap_or_default());
    match begin_key(&state, &who.sub, &key, &hash).await? {
        KeyState::Replay(answer) => Ok(answer.into_response()),
        KeyState::Fresh => match claim(&state, &who, &body, Some(&key)).await {
            Ok(answer) => Ok(answer.into_response()),
            Err(problem) if problem.status.is_server_error() => {
                abandon_key(&state, &who.sub, &key).await;
                Err(problem)
            }
            Err(problem) => {
                let answer = Answer::of_problem(&problem);
                finish_key(&state, &who.sub, &key, &answer).await?;
                Ok(answer.into_response())
            }
        },
    }
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The rule, in the contract's order. The early refusals (404, not active)
/// and the condition are checked against the claim path's memory of the
/// catalog; the grant's batch then decides the rest (the per-user limit, the
/// stock) against the rows it locks — and if the reward or its event changed
/// since they were read, the claim is checked again against the new ones.
async fn claim(state: &AppState, who: &Identity, body: &ClaimRequest, key: Option<&str>) -> Result<Answer, Problem> {
    for _ in 0..MAX_CHECKS {
        let not_found = || Problem::not_found("no such event, or the reward is not one of its rewards");
        let target = state.catalog.claim_target(&body.event_id, &body.reward_id).await?.ok_or_else(not_found)?;
        let now = to_micros(state.clock.now());
        if !target.open_at(now) {
            return Err(not_active());
        }
        // From here the grant's writer waits for this claim (briefly).
        let announced = state.committer.announce(&target.reward.id);
        if target.condition != Condition::None {
            check_condition(state, who, &target, now).await?;
        }
        match grant(announced, who, &target, now, key).await? {
            Some(answer) => return Ok(answer),
            None => state.catalog.forget_target(&target.reward.id),
        }
    }
    Err(Problem::unavailable("the reward is being changed right now; try again", 1))
}

/// How often a claim is checked again because its reward or event changed meanwhile.
const MAX_CHECKS: usize = 3;

fn not_active() -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, ProblemCode::EventNotActive, "the event is not open for claims now")
}

fn duplicate(limit: i64) -> Problem {
    Problem::conflict(
        ProblemCode::DuplicateClaim,
        format!("you already hold {limit} claim(s) of this reward, the most allowed"),
    )
}

async fn live_claims(state: &AppState, user: &str, reward: &str) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM reward_claims WHERE user_id = $1 AND reward_id = $2 AND slot IS NOT NULL";
    with_pool!(state.store(), |pool| sqlx::query_scalar(sql).bind(user).bind(reward).fetch_one(pool).await)
}

/// 400 with what is missing when the condition is not met — unless the
/// player already holds the most claims allowed, which the contract answers
/// first (409). The refusal is kept as one `REJECTED` claim per player and
/// reward, refreshed each time.
async fn check_condition(state: &AppState, who: &Identity, target: &Target, now: i64) -> Result<(), Problem> {
    let progress = Ledger { store: state.store() }.evaluate(&who.sub, &target.condition, target.window).await?;
    if progress.met {
        return Ok(());
    }
    let reward = &target.reward;
    if live_claims(state, &who.sub, &reward.id).await? >= reward.per_user_limit {
        return Err(duplicate(reward.per_user_limit));
    }
    let reason = format!("condition not met: {}", progress.summary);
    let upsert = format!(
        "INSERT INTO reward_claims ({CLAIM_COLUMNS}, refusal) \
         VALUES ($1, $2, $3, $4, NULL, 'REJECTED', $5, $6, $7, NULL, $7, true) \
         ON CONFLICT (user_id, reward_id) WHERE refusal DO UPDATE SET reason = $5, updated_at = $7"
    );
    with_pool!(state.store(), |pool| {
        sqlx::query(&upsert)
            .bind(crate::new_id())
            .bind(&who.sub)
            .bind(&target.event.id)
            .bind(&reward.id)
            .bind(&reason)
            .bind(&target.snapshot)
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
    })?;
    let mut problem = Problem::new(StatusCode::BAD_REQUEST, ProblemCode::ConditionNotMet, reason);
    problem.errors = vec![FieldError::new("condition", progress.summary)];
    Err(problem)
}

/// The decisive steps, in the grant's batch (see [`crate::commit`]); `None`
/// when the reward or its event changed since `target` was read.
async fn grant(
    announced: Announced,
    who: &Identity,
    target: &Target,
    now: i64,
    key: Option<&str>,
) -> Result<Option<Answer>, Problem> {
    let reward = &target.reward;
    let status = if reward.requires_approval { "PENDING" } else { "APPROVED" };
    let row = ClaimRow {
        id: crate::new_id(),
        user_id: who.sub.clone(),
        event_id: target.event.id.clone(),
        reward_id: reward.id.clone(),
        slot: None,
        status: status.to_owned(),
        reason: None,
        reward: target.snapshot.clone(),
        created_at: now,
        processed_at: None,
        updated_at: now,
    };
    let body = serde_json::to_string(&ClaimView::from_row(&row)).unwrap_or_default();
    // The row has made the answer; its fields move on into the grant.
    let ClaimRow { id: claim_id, user_id, event_id, reward_id, reward: snapshot, .. } = row;
    let grant = Grant {
        transition_id: crate::new_id(),
        claim_id: claim_id.clone(),
        user_id,
        event_id,
        reward_id: reward_id.clone(),
        actor: who.sub.clone(),
        at: now,
        status,
        reward: snapshot,
        reward_version: target.reward_version,
        event_version: target.event_version,
        key: key.map(|k| (k.to_owned(), body.clone())),
    };
    let outcome = announced.grant(grant).await.map_err(|e| Problem::internal_from(format_args!("grant: {e}")))?;
    match outcome {
        Outcome::Granted => {
            tracing::info!(%claim_id, user_id = %who.sub, %reward_id, status, "reward claimed");
            Ok(Some(Answer { status: StatusCode::CREATED, body }))
        }
        Outcome::Stale => Ok(None),
        Outcome::Duplicate { limit } => Err(duplicate(limit)),
        Outcome::OutOfStock => Err(Problem::conflict(ProblemCode::OutOfStock, "this reward has no grants left")),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ClaimQuery {
    pub user_id: Option<String>,
    pub event_id: Option<String>,
    pub reward_id: Option<String>,
    pub status: Option<String>,
    /// Claims made at or after this RFC 3339 instant.
    pub from: Option<String>,
    /// Claims made before this RFC 3339 instant.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn instant(text: Option<&str>, field: &str, errors: &mut Vec<FieldError>) -> Option<i64> {
    match text.map(DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => Some(to_micros(t.with_timezone(&Utc))),
        Some(Err(_)) => {
            errors.push(FieldError::new(field, "must be an RFC 3339 instant"));
            None
        }
        None => None,
    }
}

async fn list_claims(state: &AppState, query: ClaimQuery, only_user: Option<&str>) -> Result<Page<ClaimView>, Problem> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let mut errors = Vec::new();
    if query.status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
        errors.push(FieldError::new("status", "must be PENDING, APPROVED, REJECTED, PAID, FAILED or CANCELLED"));
    }
    let from = instant(query.from.as_deref(), "from", &mut errors);
    let to = instant(query.to.as_deref(), "to", &mut errors);
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let user = only_user.map(str::to_owned).or(query.user_id);
    let sql = format!(
        "SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE {keyset} \
         AND ($3 IS NULL OR user_id = $3) AND ($4 IS NULL OR event_id = $4) AND ($5 IS NULL OR reward_id = $5) \
         AND ($6 IS NULL OR status = $6) AND ($7 IS NULL OR created_at >= $7) AND ($8 IS NULL OR created_at < $8) \
         ORDER BY created_at DESC, id DESC LIMIT $9",
        keyset = keyset_condition(1, 2)
    );
    let (at, id) = page.bounds();
    let rows: Vec<ClaimRow> = with_pool!(state.store(), |pool| {
        sqlx::query_as(&sql)
            .bind(at)
            .bind(&id)
            .bind(&user)
            .bind(&query.event_id)
            .bind(&query.reward_id)
            .bind(&query.status)
            .bind(from)
            .bind(to)
            .bind(page.fetch())
            .fetch_all(pool)
            .await
    })?;
    let page = Page::from_rows(rows, &page, |c| Cursor { at: c.created_at, id: c.id.clone() });
    Ok(page.map(|row| ClaimView::from_row(&row)))
}

/// The caller's own claims, newest first.
#[utoipa::path(get, path = "/reward-claims/me", tag = "claims", params(ClaimQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<ClaimView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema)))]
pub async fn mine(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ClaimQuery>,
) -> Result<Json<Page<ClaimView>>, Problem> {
    if query.user_id.is_some() {
        return Err(Problem::invalid_field("userId", "not a filter of your own claims"));
    }
    Ok(Json(list_claims(&state, query, Some(&caller.0.sub)).await?))
}

/// All claims, newest first (OPERATOR, AUDITOR, ADMIN).
#[utoipa::path(get, path = "/reward-claims", tag = "claims", params(ClaimQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<ClaimView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ClaimQuery>,
) -> Result<Json<Page<ClaimView>>, Problem> {
    caller.require(&[Role::Operator, Role::Auditor, Role::Admin])?;
    Ok(Json(list_claims(&state, query, None).await?))
}

/// One claim: staff see any, a player only its own (another's is 404).
#[utoipa::path(get, path = "/reward-claims/{id}", tag = "claims", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = ClaimView), (status = 401, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ClaimView>, Problem> {
    let sql = format!("SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE id = $1");
    let row: Option<ClaimRow> =
        with_pool!(state.store(), |pool| sqlx::query_as(&sql).bind(&id).fetch_optional(pool).await)?;
    let staff = caller.0.has_any_role(&[Role::Operator, Role::Auditor, Role::Admin]);
    match row {
        Some(row) if staff || row.user_id == caller.0.sub => Ok(Json(ClaimView::from_row(&row))),
        _ => Err(Problem::not_found(format!("no claim `{id}`"))),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Why (shown to the player).
    pub reason: String,
}

/// What a workflow step does, checked and applied in one transaction.
enum Step {
    Approve,
    Reject(String),
    Retry,
}

impl Step {
    fn transition(&self) -> (&'static str, &'static str) {
        match self {
            Step::Approve => ("PENDING", "APPROVED"),
            Step::Reject(_) => ("PENDING", "REJECTED"),
            Step::Retry => ("FAILED", "APPROVED"),
        }
    }
}

/// Moves a claim along the workflow; an illegal move is 409, nothing changes.
async fn step(state: &AppState, actor: &Identity, id: &str, step: Step) -> Result<ClaimView, Problem> {
    let (from, to) = step.transition();
    let now = to_micros(state.clock.now());
    let select = format!("SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE id = $1");
    let reason = match &step {
        Step::Reject(reason) => Some(reason.clone()),
        _ => None,
    };
    // A rejected claim gives its slot and its unit of stock back.
    let moved_sql = match step {
        Step::Reject(_) => {
            "UPDATE reward_claims SET status = $1, reason = $2, slot = NULL, processed_at = $3, updated_at = $3 \
                            WHERE id = $4 AND status = $5"
        }
        _ => {
            "UPDATE reward_claims SET status = $1, reason = $2, processed_at = $3, updated_at = $3 WHERE id = $4 AND status = $5"
        }
    };
    let restock =
        "UPDATE rewards SET remaining = remaining + 1 WHERE id = $1 AND stock IS NOT NULL AND remaining < stock";
    let payout = "INSERT INTO payouts (claim_id, attempts, next_attempt_at) VALUES ($1, 0, $2) \
                  ON CONFLICT (claim_id) DO UPDATE SET attempts = 0, next_attempt_at = $2";
    let insert_transitions = batch::insert_transitions(state.store().kind());
    let outcome: Result<Option<ClaimRow>, sqlx::Error> = async {
        Ok(with_write_tx!(state.store(), |tx| {
            let moved = sqlx::query(moved_sql)
                .bind(to)
                .bind(&reason)
                .bind(now)
                .bind(id)
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let row: Option<ClaimRow> = sqlx::query_as(&select).bind(id).fetch_optional(&mut *tx).await?;
            if moved == 1 {
                let row = row.as_ref().expect("the claim just moved");
                if to == "REJECTED" {
                    sqlx::query(restock).bind(&row.reward_id).execute(&mut *tx).await?;
                }
                if to == "APPROVED" {
                    // Handed to the dispatcher below; the poll waits its grace.
                    let due_at = crate::payout::first_poll_at(now);
                    sqlx::query(payout).bind(id).bind(due_at).execute(&mut *tx).await?;
                }
                let transition = TransitionRow {
                    id: crate::new_id(),
                    claim_id: id,
                    from_status: Some(from),
                    to_status: to,
                    actor_id: &actor.sub,
                    reason: reason.as_deref(),
                    at: now,
                };
                sqlx::query(insert_transitions).bind(batch::json(&[transition])).execute(&mut *tx).await?;
            }
            row.filter(|_| moved == 1)
        }))
    }
    .await;
    match outcome? {
        Some(row) => {
            tracing::info!(claim_id = %id, from, to, by = %actor.sub, "claim moved");
            if to == "APPROVED" {
                state.handoff.hand(row.id.clone(), row.user_id.clone(), row.reward.clone());
            }
            Ok(ClaimView::from_row(&row))
        }
        None => {
            let current: Option<ClaimRow> =
                with_pool!(state.store(), |pool| sqlx::query_as(&select).bind(id).fetch_optional(pool).await)?;
            match current {
                None => Err(Problem::not_found(format!("no claim `{id}`"))),
                Some(row) => Err(Problem::conflict(
                    ProblemCode::Conflict,
                    format!("a {} claim cannot become {to}; only a {from} one can", row.status),
                )),
            }
        }
    }
}

/// Approve a `PENDING` claim (OPERATOR, ADMIN): it is paid out next.
#[utoipa::path(post, path = "/reward-claims/{id}/approve", tag = "claims", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = ClaimView), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema),
        (status = 404, body = ProblemSchema), (status = 409, description = "Not PENDING", body = ProblemSchema)))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ClaimView>, Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    Ok(Json(step(&state, actor, &id, Step::Approve).await?))
}

/// Reject a `PENDING` claim with a reason (OPERATOR, ADMIN): its stock returns.
#[utoipa::path(post, path = "/reward-claims/{id}/reject", tag = "claims", params(("id" = String, Path)),
    request_body = RejectRequest, security(("bearer" = [])),
    responses((status = 200, body = ClaimView), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 404, body = ProblemSchema),
        (status = 409, description = "Not PENDING", body = ProblemSchema)))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<RejectRequest>,
) -> Result<Json<ClaimView>, Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(Problem::invalid_field("reason", "1 to 500 characters"));
    }
    Ok(Json(step(&state, actor, &id, Step::Reject(reason.to_owned())).await?))
}

/// Requeue a `FAILED` payout (OPERATOR, ADMIN).
#[utoipa::path(post, path = "/reward-claims/{id}/retry", tag = "claims", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = ClaimView), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema),
        (status = 404, body = ProblemSchema), (status = 409, description = "Not FAILED", body = ProblemSchema)))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ClaimView>, Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    Ok(Json(step(&state, actor, &id, Step::Retry).await?))
}
