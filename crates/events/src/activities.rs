//! The activity ledger: `POST /activities` takes batches of facts
//! (`LOGIN`, `SIGNUP`, `QUEST_CLEAR`, `LEVEL_UP`, anything) from operators,
//! game servers and internal services. Idempotent by `id`: the same activity
//! twice counts once; the same id with other content is 409. A batch is
//! written whole or not at all.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use rewards_kit::clock::to_micros;
use rewards_kit::extract::Json;
use rewards_kit::identity::{Caller, Role};
use rewards_kit::problem::{FieldError, ProblemCode, ProblemSchema};
use rewards_kit::{Problem, with_write_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;

/// Most activities in one batch.
pub const MAX_BATCH: usize = 1000;
/// How far in the future an `occurredAt` may lie (clocks disagree a little).
pub const MAX_SKEW: Duration = Duration::minutes(5);
/// Largest `attributes` object, serialised.
pub const MAX_ATTRIBUTES: usize = 4096;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityBatch {
    pub activities: Vec<ActivityIn>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActivityIn {
    /// The reporter's id for this fact; the same fact always has the same id.
    pub id: String,
    pub user_id: String,
    /// `LOGIN`, `SIGNUP`, `QUEST_CLEAR`, `LEVEL_UP` or another UPPER_SNAKE name.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// Newly recorded.
    pub accepted: usize,
    /// Already recorded with the same content.
    pub duplicates: usize,
}

/// A validated activity, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub occurred_at: i64,
    pub attributes: String,
    /// What it is about (SIGNUP: the referrer; QUEST_CLEAR: the quest).
    pub subject: Option<String>,
    /// How much (LEVEL_UP: the level).
    pub amount: Option<i64>,
}

fn valid_kind(kind: &str) -> bool {
    let mut chars = kind.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && kind.len() <= 64
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Validates a batch; every problem is reported with its path.
pub fn validate(batch: ActivityBatch, now: DateTime<Utc>) -> Result<Vec<Activity>, Problem> {
    let mut errors = Vec::new();
    if batch.activities.is_empty() || batch.activities.len() > MAX_BATCH {
        errors.push(FieldError::new("activities", format!("must hold 1 to {MAX_BATCH} activities")));
    }
    let mut out = Vec::with_capacity(batch.activities.len());
    for (i, a) in batch.activities.into_iter().enumerate() {
        let at = |field: &str| format!("activities[{i}].{field}");
        if !valid_id(&a.id) {
            errors.push(FieldError::new(at("id"), "1 to 128 visible characters"));
        }
        if !valid_id(&a.user_id) {
            errors.push(FieldError::new(at("userId"), "1 to 128 visible characters"));
        }
        if !valid_kind(&a.kind) {
            errors.push(FieldError::new(at("type"), "an UPPER_SNAKE name of at most 64 characters"));
        }
        if a.occurred_at > now + MAX_SKEW {
            errors.push(FieldError::new(at("occurredAt"), "lies in the future"));
        }
        let attributes = Value::Object(a.attributes);
        let text = attributes.to_string();
        if text.len() > MAX_ATTRIBUTES {
            errors.push(FieldError::new(at("attributes"), format!("at most {MAX_ATTRIBUTES} bytes")));
        }
        let subject = match a.kind.as_str() {
            "SIGNUP" => attributes.get("referrerId"),
            "QUEST_CLEAR" => attributes.get("questId"),
            _ => None,
        }
        .and_then(Value::as_str)
        .map(str::to_owned);
        let amount = (a.kind == "LEVEL_UP").then(|| attributes.get("level").and_then(Value::as_i64)).flatten();
        out.push(Activity {
            id: a.id,
            user_id: a.user_id,
            kind: a.kind,
            occurred_at: to_micros(a.occurred_at),
            attributes: text,
            subject,
            amount,
        });
    }
    if errors.is_empty() { Ok(out) } else { Err(Problem::fields(errors)) }
}

/// Record a batch of activities (OPERATOR, ADMIN, internal services).
#[utoipa::path(post, path = "/activities", tag = "activities", request_body = ActivityBatch, security(("bearer" = [])),
    responses((status = 200, body = BatchResult), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 409, description = "An id reused with other content", body = ProblemSchema)))]
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Json(batch): Json<ActivityBatch>,
) -> Result<Json<BatchResult>, Problem> {
    caller.require(&[Role::Operator, Role::Admin, Role::Service])?;
    let now = state.clock.now();
    let activities = validate(batch, now)?;
    let result = insert(&state, &activities, to_micros(now)).await?;
    tracing::debug!(accepted = result.accepted, duplicates = result.duplicates, by = %caller.0.sub, "activities recorded");
    Ok(Json(result))
}

/// Inserts a batch in one transaction; an id already stored with other
/// content aborts it all with 409.
pub async fn insert(state: &AppState, activities: &[Activity], received_at: i64) -> Result<BatchResult, Problem> {
    let insert = "INSERT INTO activities (id, user_id, type, occurred_at, attributes, subject, amount, received_at) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";
    let existing = "SELECT user_id, type, occurred_at, attributes FROM activities WHERE id = $1";
    let outcome: Result<Result<BatchResult, String>, sqlx::Error> = async {
        Ok(with_write_tx!(state.store(), |tx| {
            let mut result = BatchResult { accepted: 0, duplicates: 0 };
            let mut conflict = None;
            for a in activities {
                let inserted = sqlx::query(insert)
                    .bind(&a.id)
                    .bind(&a.user_id)
                    .bind(&a.kind)
                    .bind(a.occurred_at)
                    .bind(&a.attributes)
                    .bind(&a.subject)
                    .bind(a.amount)
                    .bind(received_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 1 {
                    result.accepted += 1;
                    continue;
                }
                let (user, kind, at, attributes): (String, String, i64, String) =
                    sqlx::query_as(existing).bind(&a.id).fetch_one(&mut *tx).await?;
                if (user.as_str(), kind.as_str(), at, attributes.as_str())
                    == (a.user_id.as_str(), a.kind.as_str(), a.occurred_at, a.attributes.as_str())
                {
                    result.duplicates += 1;
                } else {
                    conflict = Some(a.id.clone());
                    break;
                }
            }
            if let Some(id) = conflict {
                // Returning before the commit rolls the whole batch back.
                return Ok(Err(id));
            }
            Ok(result)
        }))
    }
    .await;
    match outcome? {
        Ok(result) => Ok(result),
        Err(id) => Err(Problem::conflict(
            ProblemCode::Conflict,
            format!("activity `{id}` was already recorded with other content; nothing in this batch was recorded"),
        )),
    }
}
