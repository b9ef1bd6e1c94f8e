//! Reward claims: the claim path, the lists, and the operators' steps.
//!
//! `POST /reward-claims` follows [`crate::rule`]: the early refusals from the
//! claim path's memory of the catalog, the condition's verdict, then the
//! grant's batch ([`crate::commit`]) decides and writes the rest in one
//! transaction — and only then does the client hear its answer.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rewards_kit::clock::{from_micros, to_micros};
use rewards_kit::extract::{Json, Path, Query};
use rewards_kit::identity::{Caller, Identity, Role};
use rewards_kit::page::{Cursor, Page, PageRequest, keyset_condition};
use rewards_kit::problem::{FieldError, ProblemCode, ProblemSchema};
use rewards_kit::{Problem, with_pool, with_write_tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::batch::{self, TransitionRow};
use crate::commit::{Grant, GrantError};
use crate::condition::Condition;
use crate::domain::{ClaimId, ClaimStatus, EventId, RewardId};
use crate::evaluator::Ledger;
use crate::keys::{self, Answer, Begun};
use crate::rule::{self, Verdict};
use crate::targets::Target;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimRow {
    pub id: String,
    pub user_id: String,
    pub event_id: String,
    pub reward_id: String,
    pub slot: Option<i64>,
    pub status: ClaimStatus,
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
    pub status: ClaimStatus,
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
            status: row.status,
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

/// Why a claim got no 201, and what that means for its idempotency key.
enum Halt {
    /// Refused before its batch (404, not active, sold out): nothing written;
    /// the refusal is the key's answer.
    Early(Problem),
    /// Refused by its batch, which stored the key's answer.
    Decided(Problem),
    /// Its key was answered by another request, or belongs to another claim.
    Replay,
    /// Nothing was written (the store refused or could not be reached): the
    /// key is released.
    Failed(Problem),
    /// Its batch's commit went unanswered and the store could not say: the
    /// key stays, and a retry with it finds out.
    Unknown(Problem),
}

impl Halt {
    fn problem(self) -> Problem {
        match self {
            Halt::Early(p) | Halt::Decided(p) | Halt::Failed(p) | Halt::Unknown(p) => p,
            Halt::Replay => in_progress(),
        }
    }
}

fn in_progress() -> Problem {
    Problem::conflict(
        ProblemCode::IdempotencyInProgress,
        "a request with this Idempotency-Key is still being processed",
    )
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
        (status = 503, description = "SERVICE_UNAVAILABLE: the store cannot be reached (with Retry-After)", body = ProblemSchema),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<ClaimRequest>,
) -> Result<Response, Problem> {
    let who = caller.require(&[Role::User, Role::Admin])?.clone();
    let Some(key) = idempotency_key(&headers)? else {
        return Ok(match claim(&state, &who, &body, crate::new_id(), None).await {
            Ok(answer) => answer.into_response(),
            Err(halt) => halt.problem().into_response(),
        });
    };
    let hash = hex_sha256(&serde_json::to_string(&body).unwrap_or_default());
    let claim_id = match keys::begin(&state, &who.sub, &key, &hash).await? {
        Begun::Replay(answer) => return Ok(answer.into_response()),
        Begun::Fresh { claim_id } => claim_id,
    };
    let answer = match claim(&state, &who, &body, claim_id.clone(), Some(&key)).await {
        Ok(answer) => answer,
        Err(Halt::Early(problem)) => {
            keys::finish(&state, &who.sub, &key, &claim_id, Answer::of_problem(&problem)).await?
        }
        Err(Halt::Decided(problem)) => Answer::of_problem(&problem),
        Err(Halt::Replay) => replayed(&state, &who.sub, &key).await?,
        Err(Halt::Failed(problem)) => {
            keys::release(&state, &who.sub, &key, &claim_id).await;
            return Err(problem);
        }
        Err(Halt::Unknown(problem)) => return Err(problem),
    };
    Ok(answer.into_response())
}

/// The answer another request of the same key stored (or is about to).
async fn replayed(state: &AppState, user: &str, key: &str) -> Result<Answer, Problem> {
    for _ in 0..20 {
        if let Some(answer) = keys::stored_answer_of(state, user, key).await? {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(in_progress())
}

/// A claim id from a path: anything but a UUID names no claim.
fn claim_id(text: &str) -> Result<ClaimId, Problem> {
    ClaimId::parse(text).ok_or_else(|| Problem::not_found(format!("no claim `{text}`")))
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// How often a claim is checked again because its reward or event changed meanwhile.
const MAX_CHECKS: usize = 3;

/// The rule, in the contract's order (see [`crate::rule`]): the early
/// refusals against the claim path's memory of the catalog, the condition,
/// then the grant's batch — and if the reward or its event changed since
/// they were read, the claim is checked again against the new ones.
async fn claim(
    state: &AppState,
    who: &Identity,
    body: &ClaimRequest,
    claim_id: String,
    key: Option<&str>,
) -> Result<Answer, Halt> {
    if EventId::parse(&body.event_id).is_none() || RewardId::parse(&body.reward_id).is_none() {
        return Err(Halt::Early(rule::not_found()));
    }
    for _ in 0..MAX_CHECKS {
        let target = state.catalog.claim_target(&body.event_id, &body.reward_id).await.map_err(Halt::Failed)?;
        let now = to_micros(state.clock.now());
        rule::admit(target.as_deref(), &body.event_id, now).map_err(Halt::Early)?;
        let target = target.expect("admitted");
        if state.committer.is_sold_out(&target.reward.id, target.reward_version) {
            return Err(Halt::Early(rule::out_of_stock()));
        }
        // From here the grant's writer waits for this claim (briefly).
        let announced = state.committer.announce(&target.reward.id);
        let unmet = unmet_condition(state, who, &target).await.map_err(Halt::Failed)?;
        let grant = grant_of(state, who, &target, now, claim_id.clone(), unmet, key);
        let body = grant.body.clone();
        let unmet = grant.unmet.clone().unwrap_or_default();
        match announced.grant(grant).await {
            Ok(Verdict::Granted { .. }) => {
                tracing::info!(%claim_id, user_id = %who.sub, reward_id = %target.reward.id, "reward claimed");
                return Ok(Answer { status: StatusCode::CREATED, body });
            }
            Ok(Verdict::Stale) => state.catalog.forget_target(&target.reward.id),
            Ok(Verdict::Replay) => return Err(Halt::Replay),
            Ok(refused) => return Err(Halt::Decided(refused.refusal(&unmet).expect("a refusal"))),
            Err(GrantError::Unknown(why)) => {
                tracing::error!(%claim_id, %why, "a claim's outcome is unknown; its key stays open");
                return Err(Halt::Unknown(Problem::unavailable(
                    "the store did not confirm the claim; retry with the same Idempotency-Key to learn its outcome",
                    1,
                )));
            }
            Err(GrantError::Unavailable(why)) => {
                tracing::warn!(%why, "a claim found the store unavailable");
                return Err(Halt::Failed(Problem::unavailable("the store is unavailable; try again shortly", 1)));
            }
            Err(GrantError::Failed(why)) => {
                return Err(Halt::Failed(Problem::internal_from(format_args!("grant: {why}"))));
            }
        }
    }
    Err(Halt::Failed(Problem::unavailable("the reward is being changed right now; try again", 1)))
}

/// What the event's condition misses for the player; `None` when it is met.
async fn unmet_condition(state: &AppState, who: &Identity, target: &Target) -> Result<Option<String>, Problem> {
    if target.condition == Condition::None {
        return Ok(None);
    }
    let progress = Ledger { store: state.store() }.evaluate(&who.sub, &target.condition, target.window).await?;
    Ok((!progress.met).then_some(progress.summary))
}

/// The claim's grant, with the answer it makes when written.
fn grant_of(
    state: &AppState,
    who: &Identity,
    target: &Target,
    now: i64,
    claim_id: String,
    unmet: Option<String>,
    key: Option<&str>,
) -> Grant {
    let reward = &target.reward;
    let status = if reward.requires_approval {
        ClaimStatus::Pending
    } else if state.settings.payout_webhook_url.is_some() {
        ClaimStatus::Approved
    } else {
        // The built-in ledger is this store: the grant is the payout.
        ClaimStatus::Paid
    };
    let view = ClaimView {
        id: claim_id.clone(),
        user_id: who.sub.clone(),
        event_id: target.event.id.clone(),
        reward_id: reward.id.clone(),
        status,
        reward: serde_json::from_str(&target.snapshot).unwrap_or(Value::Null),
        reason: None,
        created_at: from_micros(now),
        processed_at: (status == ClaimStatus::Paid).then(|| from_micros(now)),
    };
    Grant {
        body: serde_json::to_string(&view).unwrap_or_default(),
        claim_id,
        user_id: who.sub.clone(),
        event_id: target.event.id.clone(),
        reward_id: reward.id.clone(),
        at: now,
        status,
        reward: target.snapshot.clone(),
        reward_version: target.reward_version,
        event_version: target.event_version,
        unmet,
        key: key.map(str::to_owned),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ClaimQuery {
    pub user_id: Option<String>,
    pub event_id: Option<String>,
    pub reward_id: Option<String>,
    pub status: Option<ClaimStatus>,
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
            .bind(query.status)
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
    let id = claim_id(&id)?;
    let sql = format!("SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE id = $1");
    let row: Option<ClaimRow> =
        with_pool!(state.store(), |pool| sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(pool).await)?;
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
    fn transition(&self) -> (ClaimStatus, ClaimStatus) {
        match self {
            Step::Approve => (ClaimStatus::Pending, ClaimStatus::Approved),
            Step::Reject(_) => (ClaimStatus::Pending, ClaimStatus::Rejected),
            Step::Retry => (ClaimStatus::Failed, ClaimStatus::Approved),
        }
    }
}

/// Who pays a claim with the built-in ledger (the transition's actor).
pub const LEDGER_ACTOR: &str = "ledger";

/// Moves a claim along the workflow; an illegal move is 409, nothing changes.
/// A claim approved (or retried) with the built-in ledger is paid in the same
/// transaction; with an external sink it goes to the payout outbox.
async fn step(state: &AppState, actor: &Identity, id: &str, step: Step) -> Result<ClaimView, Problem> {
    let id = claim_id(id)?;
    let id = id.as_str();
    let (from, to) = step.transition();
    let builtin = state.settings.payout_webhook_url.is_none();
    let now = to_micros(state.clock.now());
    let select = format!("SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE id = $1");
    let reason = match &step {
        Step::Reject(reason) => Some(reason.clone()),
        _ => None,
    };
    let lands = if to == ClaimStatus::Approved && builtin { ClaimStatus::Paid } else { to };
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
    // A returned unit is a new version of the reward: a claim path that knew
    // it sold out asks the store again.
    let restock = "UPDATE rewards SET remaining = remaining + 1, version = version + 1 \
                   WHERE id = $1 AND stock IS NOT NULL AND remaining < stock";
    let payout = "INSERT INTO payouts (claim_id, attempts, next_attempt_at) VALUES ($1, 0, $2) \
                  ON CONFLICT (claim_id) DO UPDATE SET attempts = 0, next_attempt_at = $2";
    let insert_transitions = batch::insert_transitions(state.store().kind());
    let outcome: Result<Option<ClaimRow>, sqlx::Error> = async {
        Ok(with_write_tx!(state.store(), |tx| {
            let moved = sqlx::query(moved_sql)
                .bind(lands)
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
                if to == ClaimStatus::Rejected {
                    sqlx::query(restock).bind(&row.reward_id).execute(&mut *tx).await?;
                }
                if lands == ClaimStatus::Approved {
                    // Handed to the dispatcher below; the poll waits its grace.
                    let due_at = crate::payout::first_poll_at(now);
                    sqlx::query(payout).bind(id).bind(due_at).execute(&mut *tx).await?;
                }
                let mut transitions = vec![TransitionRow {
                    id: crate::new_id(),
                    claim_id: id,
                    from_status: Some(from.as_str()),
                    to_status: to.as_str(),
                    actor_id: &actor.sub,
                    reason: reason.as_deref(),
                    at: now,
                }];
                if lands != to {
                    transitions.push(TransitionRow {
                        id: crate::new_id(),
                        claim_id: id,
                        from_status: Some(to.as_str()),
                        to_status: lands.as_str(),
                        actor_id: LEDGER_ACTOR,
                        reason: None,
                        at: now,
                    });
                }
                sqlx::query(insert_transitions).bind(batch::json(&transitions)).execute(&mut *tx).await?;
            }
            row.filter(|_| moved == 1)
        }))
    }
    .await;
    match outcome? {
        Some(row) => {
            tracing::info!(claim_id = %id, %from, to = %lands, by = %actor.sub, "claim moved");
            if to == ClaimStatus::Rejected {
                state.catalog.forget_target(&row.reward_id);
                state.committer.forget_sold_out(&row.reward_id);
            }
            if lands == ClaimStatus::Approved {
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

/// One step of a claim's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionView {
    /// `null` for the claim's creation.
    pub from_status: Option<ClaimStatus>,
    pub to_status: ClaimStatus,
    /// Who moved it: a user id, or `ledger` / `payout` for the platform.
    pub actor_id: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionList {
    pub items: Vec<TransitionView>,
}

#[derive(Debug, sqlx::FromRow)]
struct StoredTransition {
    from_status: Option<ClaimStatus>,
    to_status: ClaimStatus,
    actor_id: String,
    reason: Option<String>,
    at: i64,
}

/// A claim's history, oldest first: what was recorded (steps taken later or
/// by hand) after what its own row says of its creation — an automatic grant
/// is requested, approved and, with the built-in ledger, paid at one instant,
/// and writes no transition rows.
fn history(row: &ClaimRow, stored: Vec<StoredTransition>) -> Vec<TransitionView> {
    let view = |t: StoredTransition| TransitionView {
        from_status: t.from_status,
        to_status: t.to_status,
        actor_id: t.actor_id,
        reason: t.reason,
        at: from_micros(t.at),
    };
    let created = |to: ClaimStatus, reason: Option<String>, at: i64| TransitionView {
        from_status: None,
        to_status: to,
        actor_id: row.user_id.clone(),
        reason,
        at: from_micros(at),
    };
    let mut items = Vec::with_capacity(stored.len() + 2);
    match stored.first().and_then(|t| t.from_status) {
        Some(first) => items.push(created(first, None, row.created_at)),
        // A condition refusal: one record, refreshed on each retry.
        None if row.status == ClaimStatus::Rejected && row.slot.is_none() && stored.is_empty() => {
            items.push(created(ClaimStatus::Rejected, row.reason.clone(), row.updated_at))
        }
        None if row.status == ClaimStatus::Paid && stored.is_empty() => {
            items.push(created(ClaimStatus::Approved, None, row.created_at));
            items.push(TransitionView {
                from_status: Some(ClaimStatus::Approved),
                to_status: ClaimStatus::Paid,
                actor_id: LEDGER_ACTOR.to_owned(),
                reason: None,
                at: from_micros(row.processed_at.unwrap_or(row.created_at)),
            });
        }
        None => items.push(created(row.status, None, row.created_at)),
    }
    items.extend(stored.into_iter().filter(|t| t.from_status.is_some()).map(view));
    items
}

/// A claim's history, oldest first, automatic steps included: staff see
/// any claim's, a player only its own (another's is 404).
#[utoipa::path(get, path = "/reward-claims/{id}/transitions", tag = "claims", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = TransitionList), (status = 401, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn transitions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TransitionList>, Problem> {
    let id = claim_id(&id)?;
    let claim = format!("SELECT {CLAIM_COLUMNS} FROM reward_claims WHERE id = $1");
    let steps = "SELECT from_status, to_status, actor_id, reason, at FROM claim_transitions \
                 WHERE claim_id = $1 ORDER BY at, id";
    let row: Option<ClaimRow> =
        with_pool!(state.store(), |pool| sqlx::query_as(&claim).bind(id.as_str()).fetch_optional(pool).await)?;
    let staff = caller.0.has_any_role(&[Role::Operator, Role::Auditor, Role::Admin]);
    let row = row
        .filter(|r| staff || r.user_id == caller.0.sub)
        .ok_or_else(|| Problem::not_found(format!("no claim `{id}`")))?;
    let stored: Vec<StoredTransition> =
        with_pool!(state.store(), |pool| sqlx::query_as(steps).bind(id.as_str()).fetch_all(pool).await)?;
    Ok(Json(TransitionList { items: history(&row, stored) }))
}
