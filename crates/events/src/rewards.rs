//! Rewards: create, list, get, partial update.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rewards_kit::Problem;
use rewards_kit::clock::{from_micros, to_micros};
use rewards_kit::extract::{Json, Path, Query};
use rewards_kit::identity::{Caller, Role};
use rewards_kit::page::{Cursor, Page, PageRequest};
use rewards_kit::problem::{FieldError, ProblemCode, ProblemSchema};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::store::{Change, RewardRow, StoreError};

pub const TYPES: [&str; 4] = ["POINT", "ITEM", "COUPON", "CURRENCY"];

/// A reward as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewardView {
    pub id: String,
    pub event_id: String,
    pub name: String,
    /// `POINT`, `ITEM`, `COUPON` or `CURRENCY`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub details: Value,
    /// How much one grant gives.
    pub quantity: i64,
    /// Grants in total; absent: unlimited.
    pub stock: Option<i64>,
    /// Grants left; absent: unlimited.
    pub remaining: Option<i64>,
    pub per_user_limit: i64,
    pub requires_approval: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RewardView {
    pub fn from_row(row: &RewardRow) -> Self {
        Self {
            id: row.id.clone(),
            event_id: row.event_id.clone(),
            name: row.name.clone(),
            kind: row.kind.clone(),
            details: serde_json::from_str(&row.details).unwrap_or(Value::Null),
            quantity: row.quantity,
            stock: row.stock,
            remaining: row.remaining,
            per_user_limit: row.per_user_limit,
            requires_approval: row.requires_approval,
            created_at: from_micros(row.created_at),
            updated_at: from_micros(row.updated_at),
        }
    }

    fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateReward {
    pub event_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `{"itemId": ...}` for ITEM, `{"couponCode": ...}` for COUPON; any object otherwise.
    #[schema(value_type = Object)]
    pub details: Value,
    /// How much one grant gives, at least 1.
    pub quantity: i64,
    /// Grants in total; absent: unlimited.
    #[serde(default)]
    pub stock: Option<i64>,
    /// Default 1.
    #[serde(default)]
    pub per_user_limit: Option<i64>,
    /// Default false.
    #[serde(default)]
    pub requires_approval: Option<bool>,
}

/// Every field optional; `"stock": null` makes the reward unlimited.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateReward {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    pub quantity: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub stock: Option<Option<i64>>,
    pub per_user_limit: Option<i64>,
    pub requires_approval: Option<bool>,
}

/// Tells a field that is present (even as `null`) from one that is absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RewardQuery {
    /// Only this event's rewards.
    pub event_id: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Checks the fields a reward is made of; pushes every problem found.
fn check_fields(
    name: &str,
    kind: &str,
    details: &Value,
    quantity: i64,
    per_user_limit: i64,
    errors: &mut Vec<FieldError>,
) -> Option<Map<String, Value>> {
    if !(1..=100).contains(&name.trim().chars().count()) {
        errors.push(FieldError::new("name", "must be 1 to 100 characters"));
    }
    if !TYPES.contains(&kind) {
        errors.push(FieldError::new("type", "must be POINT, ITEM, COUPON or CURRENCY"));
    }
    if !(1..=1_000_000_000).contains(&quantity) {
        errors.push(FieldError::new("quantity", "must be from 1 to 1000000000"));
    }
    if !(1..=1000).contains(&per_user_limit) {
        errors.push(FieldError::new("perUserLimit", "must be from 1 to 1000"));
    }
    let Some(details) = details.as_object() else {
        errors.push(FieldError::new("details", "must be an object"));
        return None;
    };
    if serde_json::to_string(details).map_or(0, |s| s.len()) > 4096 {
        errors.push(FieldError::new("details", "at most 4 KiB"));
    }
    let required = match kind {
        "ITEM" => Some("itemId"),
        "COUPON" => Some("couponCode"),
        _ => None,
    };
    if let Some(key) = required
        && details.get(key).and_then(Value::as_str).is_none_or(|s| s.trim().is_empty())
    {
        errors.push(FieldError::new(format!("details.{key}"), format!("a {kind} reward names its `{key}`")));
    }
    Some(details.clone())
}

fn check_stock(stock: Option<i64>, errors: &mut Vec<FieldError>) {
    if stock.is_some_and(|s| !(0..=1_000_000_000).contains(&s)) {
        errors.push(FieldError::new("stock", "must be from 0 to 1000000000"));
    }
}

/// Create a reward of an existing event (OPERATOR, ADMIN).
#[utoipa::path(post, path = "/rewards", tag = "rewards", request_body = CreateReward, security(("bearer" = [])),
    responses((status = 201, body = RewardView), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 404, description = "No such event", body = ProblemSchema)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateReward>,
) -> Result<(StatusCode, Json<RewardView>), Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    let mut errors = Vec::new();
    let per_user_limit = body.per_user_limit.unwrap_or(1);
    let details = check_fields(&body.name, &body.kind, &body.details, body.quantity, per_user_limit, &mut errors);
    check_stock(body.stock, &mut errors);
    let (Some(details), true) = (details, errors.is_empty()) else {
        return Err(Problem::fields(errors));
    };
    let now = to_micros(state.clock.now());
    let row = RewardRow {
        id: uuid::Uuid::now_v7().to_string(),
        event_id: body.event_id.clone(),
        name: body.name.trim().to_owned(),
        kind: body.kind,
        details: Value::Object(details).to_string(),
        quantity: body.quantity,
        stock: body.stock,
        remaining: body.stock,
        per_user_limit,
        requires_approval: body.requires_approval.unwrap_or(false),
        created_by: actor.sub.clone(),
        created_at: now,
        updated_at: now,
    };
    let view = RewardView::from_row(&row);
    let change = Change { actor_id: &actor.sub, actor_name: &actor.username, at: now };
    match state.catalog.insert_reward(&row, &change, view.json()).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => return Err(crate::events::no_event(&body.event_id)),
        Err(err) => return Err(err.into()),
    }
    tracing::info!(reward_id = %row.id, event_id = %row.event_id, by = %actor.sub, "reward created");
    Ok((StatusCode::CREATED, Json(view)))
}

/// List rewards, newest first (OPERATOR, AUDITOR, ADMIN).
#[utoipa::path(get, path = "/rewards", tag = "rewards", params(RewardQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<RewardView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<RewardQuery>,
) -> Result<Json<Page<RewardView>>, Problem> {
    caller.require(&[Role::Operator, Role::Auditor, Role::Admin])?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let rows = state.catalog.list_rewards(query.event_id.as_deref(), &page).await?;
    let page = Page::from_rows(rows, &page, |r| Cursor { at: r.created_at, id: r.id.clone() });
    Ok(Json(page.map(|row| RewardView::from_row(&row))))
}

/// One reward (OPERATOR, AUDITOR, ADMIN).
#[utoipa::path(get, path = "/rewards/{id}", tag = "rewards", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = RewardView), (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema),
        (status = 404, body = ProblemSchema)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RewardView>, Problem> {
    caller.require(&[Role::Operator, Role::Auditor, Role::Admin])?;
    let row = state.catalog.reward(&id).await?.ok_or_else(|| no_reward(&id))?;
    Ok(Json(RewardView::from_row(&row)))
}

fn no_reward(id: &str) -> Problem {
    Problem::not_found(format!("no reward `{id}`"))
}

/// Change some of a reward's fields (OPERATOR, ADMIN). Stock below what was
/// already granted is 409. `PATCH` does the same.
#[utoipa::path(put, path = "/rewards/{id}", tag = "rewards", request_body = UpdateReward, security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = RewardView), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 404, body = ProblemSchema),
        (status = 409, description = "Stock below what was granted", body = ProblemSchema)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateReward>,
) -> Result<Json<RewardView>, Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    let now = to_micros(state.clock.now());
    let change = Change { actor_id: &actor.sub, actor_name: &actor.username, at: now };
    let row =
        state.catalog.update_reward(&id, &change, |current| apply_update(current, &body, now)).await.map_err(|e| {
            match e {
                StoreError::NotFound => no_reward(&id),
                other => other.into(),
            }
        })?;
    tracing::info!(reward_id = %id, by = %actor.sub, "reward updated");
    Ok(Json(RewardView::from_row(&row)))
}

fn apply_update(current: &RewardRow, body: &UpdateReward, now: i64) -> Result<(RewardRow, Value, Value), Problem> {
    let mut errors = Vec::new();
    let mut next = current.clone();
    if let Some(name) = &body.name {
        next.name = name.trim().to_owned();
    }
    if let Some(kind) = &body.kind {
        next.kind = kind.clone();
    }
    let details = body.details.clone().unwrap_or_else(|| serde_json::from_str(&current.details).unwrap_or(Value::Null));
    next.quantity = body.quantity.unwrap_or(current.quantity);
    next.per_user_limit = body.per_user_limit.unwrap_or(current.per_user_limit);
    next.requires_approval = body.requires_approval.unwrap_or(current.requires_approval);
    let details = check_fields(&next.name, &next.kind, &details, next.quantity, next.per_user_limit, &mut errors);
    if let Some(stock) = body.stock {
        check_stock(stock, &mut errors);
    }
    let nothing = body.name.is_none()
        && body.kind.is_none()
        && body.details.is_none()
        && body.quantity.is_none()
        && body.stock.is_none()
        && body.per_user_limit.is_none()
        && body.requires_approval.is_none();
    if nothing {
        errors.push(FieldError::new("$", "nothing to change"));
    }
    let (Some(details), true) = (details, errors.is_empty()) else {
        return Err(Problem::fields(errors));
    };
    next.details = Value::Object(details).to_string();
    if let Some(stock) = body.stock {
        (next.stock, next.remaining) = restock(current, stock)?;
    }
    next.updated_at = now;
    Ok((next.clone(), RewardView::from_row(current).json(), RewardView::from_row(&next).json()))
}

/// The new stock and remaining grants. What was granted stays granted:
/// stock below it is refused. An unlimited reward's grants are not counted
/// against a stock, so a stock is set when the reward is created.
fn restock(current: &RewardRow, stock: Option<i64>) -> Result<(Option<i64>, Option<i64>), Problem> {
    match (current.stock, current.remaining, stock) {
        (_, _, None) => Ok((None, None)),
        (Some(old), Some(left), Some(new)) => {
            let granted = old - left;
            if new < granted {
                Err(Problem::conflict(
                    ProblemCode::Conflict,
                    format!("{granted} grants were already made; stock cannot go below that"),
                ))
            } else {
                Ok((Some(new), Some(new - granted)))
            }
        }
        _ => Err(Problem::conflict(
            ProblemCode::Conflict,
            "an unlimited reward cannot be given a stock later; create a limited reward instead",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reward(stock: Option<i64>, remaining: Option<i64>) -> RewardRow {
        RewardRow {
            id: "r".into(),
            event_id: "e".into(),
            name: "n".into(),
            kind: "POINT".into(),
            details: "{}".into(),
            quantity: 1,
            stock,
            remaining,
            per_user_limit: 1,
            requires_approval: false,
            created_by: "u".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn restocking_keeps_what_was_granted() {
        let r = reward(Some(100), Some(40)); // 60 granted
        assert_eq!(restock(&r, Some(80)).unwrap(), (Some(80), Some(20)));
        assert_eq!(restock(&r, Some(60)).unwrap(), (Some(60), Some(0)));
        assert_eq!(restock(&r, Some(59)).unwrap_err().status.as_u16(), 409);
        assert_eq!(restock(&r, None).unwrap(), (None, None));
        assert_eq!(restock(&reward(None, None), Some(5)).unwrap_err().status.as_u16(), 409);
    }
}
