//! Events: create, list, get (with rewards), partial update.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rewards_kit::Problem;
use rewards_kit::clock::{from_micros, to_micros};
use rewards_kit::extract::{Json, Path, Query};
use rewards_kit::identity::{Caller, Identity, Role};
use rewards_kit::page::{Cursor, Page, PageRequest};
use rewards_kit::problem::{FieldError, ProblemSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::condition::Condition;
use crate::dates::{self, Edge};
use crate::domain::EventStatus;
use crate::rewards::RewardView;
use crate::store::{Change, EventFilter, EventRow};

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The condition tree (see the contract's table of types).
    #[schema(value_type = Object)]
    pub condition: Value,
    /// First instant of the window (inclusive).
    pub start_date: DateTime<Utc>,
    /// Last instant of the window (inclusive).
    pub end_date: DateTime<Utc>,
    /// The zone days are counted in.
    pub time_zone: String,
    pub status: EventStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Vec<RewardView>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EventView {
    pub fn from_row(row: &EventRow) -> Self {
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            description: row.description.clone(),
            condition: serde_json::from_str(&row.condition).unwrap_or(Value::Null),
            start_date: from_micros(row.start_at),
            end_date: from_micros(row.end_at),
            time_zone: row.time_zone.clone(),
            status: row.status,
            rewards: None,
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
pub struct CreateEvent {
    /// 1–100 characters.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[schema(value_type = Object)]
    pub condition: Value,
    /// `YYYY-MM-DD` (the whole day in the event's time zone) or an RFC 3339 instant.
    pub start_date: String,
    pub end_date: String,
    /// Default `INACTIVE`: players see an event once an operator activates it.
    #[serde(default)]
    pub status: Option<String>,
    /// IANA zone; default the deployment's (`Asia/Seoul`).
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// Every field optional; what is given replaces what was.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateEvent {
    pub name: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub condition: Option<Value>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub status: Option<String>,
    pub time_zone: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// `ACTIVE`, `INACTIVE` or `ENDED`.
    pub status: Option<String>,
    /// Only events whose window contains this RFC 3339 instant.
    pub active_at: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Staff see every event; a player (USER and nothing more) sees only what
/// it can claim.
fn is_staff(identity: &Identity) -> bool {
    identity.has_any_role(&[Role::Operator, Role::Auditor, Role::Admin])
}

fn check_status(status: &str, field: &str) -> Result<EventStatus, FieldError> {
    status.parse().map_err(|_| FieldError::new(field, format!("must be {}", EventStatus::names())))
}

fn check_name(name: &str) -> Result<(), FieldError> {
    let len = name.trim().chars().count();
    if (1..=100).contains(&len) { Ok(()) } else { Err(FieldError::new("name", "must be 1 to 100 characters")) }
}

fn check_description(text: &str) -> Result<(), FieldError> {
    if text.chars().count() <= 2000 { Ok(()) } else { Err(FieldError::new("description", "at most 2000 characters")) }
}

/// The event's window and condition checked together: dates parse, the end is
/// not before the start, and the condition can be met within the window.
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn resolve_window(
    start: Result<DateTime<Utc>, FieldError>,
    end: Result<DateTime<Utc>, FieldError>,
    errors: &mut Vec<FieldError>,
) -> Option<Window> {
    match (start, end) {
        (Ok(start), Ok(end)) if end < start => {
            errors.push(FieldError::new("endDate", "is before startDate"));
            None
        }
        (Ok(start), Ok(end)) => Some(Window { start, end }),
        (start, end) => {
            errors.extend(start.err());
            errors.extend(end.err());
            None
        }
    }
}

fn parse_date(text: &str, tz: Tz, edge: Edge, field: &str) -> Result<DateTime<Utc>, FieldError> {
    dates::parse(text, tz, edge).map_err(|why| FieldError::new(field, why))
}

fn check_possible(condition: &Condition, window: &Window, tz: Tz, errors: &mut Vec<FieldError>) {
    errors.extend(condition.impossible_in(dates::days_in_window(window.start, window.end, tz), "condition"));
}

/// Create an event (OPERATOR, ADMIN).
#[utoipa::path(post, path = "/events", tag = "events", request_body = CreateEvent, security(("bearer" = [])),
    responses((status = 201, body = EventView), (status = 400, body = ProblemSchema),
        (status = 401, body = ProblemSchema), (status = 403, body = ProblemSchema)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateEvent>,
) -> Result<(StatusCode, Json<EventView>), Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    let mut errors = Vec::new();
    errors.extend(check_name(&body.name).err());
    errors.extend(check_description(&body.description).err());
    let status = match body.status.as_deref().map(|s| check_status(s, "status")) {
        None => EventStatus::Inactive,
        Some(Ok(status)) => status,
        Some(Err(error)) => {
            errors.push(error);
            EventStatus::Inactive
        }
    };
    let tz_name = body.time_zone.clone().unwrap_or_else(|| state.settings.time_zone.clone());
    let tz = match dates::time_zone(&tz_name) {
        Ok(tz) => Some(tz),
        Err(why) => {
            errors.push(FieldError::new("timeZone", why));
            None
        }
    };
    let condition = Condition::parse(&body.condition, "condition").map_err(|e| errors.extend(e)).ok();
    let window = tz.and_then(|tz| {
        let start = parse_date(&body.start_date, tz, Edge::Start, "startDate");
        let end = parse_date(&body.end_date, tz, Edge::End, "endDate");
        resolve_window(start, end, &mut errors)
    });
    if let (Some(condition), Some(window), Some(tz)) = (&condition, &window, tz) {
        check_possible(condition, window, tz, &mut errors);
    }
    let (Some(condition), Some(window), true) = (condition, window, errors.is_empty()) else {
        return Err(Problem::fields(errors));
    };
    let now = to_micros(state.clock.now());
    let row = EventRow {
        id: uuid::Uuid::now_v7().to_string(),
        name: body.name.trim().to_owned(),
        description: body.description,
        condition: condition.to_json().to_string(),
        start_at: to_micros(window.start),
        end_at: to_micros(window.end),
        time_zone: tz_name,
        status,
        created_by: actor.sub.clone(),
        created_at: now,
        updated_at: now,
    };
    let view = EventView::from_row(&row);
    let change = Change { actor_id: &actor.sub, actor_name: &actor.username, at: now };
    state.catalog.insert_event(&row, &change, view.json()).await?;
    tracing::info!(event_id = %row.id, by = %actor.sub, "event created");
    Ok((StatusCode::CREATED, Json(view)))
}

/// List events, newest first. Staff see all (filter by `status`, `activeAt`);
/// a player sees only the events it can claim now.
#[utoipa::path(get, path = "/events", tag = "events", params(EventQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<EventView>), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<EventQuery>,
) -> Result<Json<Page<EventView>>, Problem> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let mut errors = Vec::new();
    let status = match query.status.as_deref().map(|s| check_status(s, "status")) {
        Some(Ok(status)) => Some(status),
        Some(Err(error)) => {
            errors.push(error);
            None
        }
        None => None,
    };
    let active_at = match query.active_at.as_deref().map(DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => Some(to_micros(t.with_timezone(&Utc))),
        Some(Err(_)) => {
            errors.push(FieldError::new("activeAt", "must be an RFC 3339 instant"));
            None
        }
        None => None,
    };
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let filter = if is_staff(&caller.0) {
        EventFilter { status, active_at }
    } else {
        // A player's list: claimable now, whatever else was asked.
        if status.is_some_and(|s| s != EventStatus::Active) {
            return Ok(Json(Page { items: Vec::new(), next_cursor: None }));
        }
        EventFilter { status: Some(EventStatus::Active), active_at: Some(to_micros(state.clock.now())) }
    };
    let rows = state.catalog.list_events(&filter, &page).await?;
    let page = Page::from_rows(rows, &page, |e| Cursor { at: e.created_at, id: e.id.clone() });
    Ok(Json(page.map(|row| EventView::from_row(&row))))
}

/// One event with its rewards. Players do not see inactive (draft) events.
#[utoipa::path(get, path = "/events/{id}", tag = "events", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = EventView), (status = 401, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EventView>, Problem> {
    let row = state.catalog.event(&id).await?.ok_or_else(|| no_event(&id))?;
    if !is_staff(&caller.0) && row.status == EventStatus::Inactive {
        return Err(no_event(&id));
    }
    let rewards = state.catalog.rewards_of(&id).await?;
    let mut view = EventView::from_row(&row);
    view.rewards = Some(rewards.iter().map(RewardView::from_row).collect());
    Ok(Json(view))
}

pub fn no_event(id: &str) -> Problem {
    Problem::not_found(format!("no event `{id}`"))
}

/// Change some of an event's fields (OPERATOR, ADMIN). `PATCH` does the same.
#[utoipa::path(put, path = "/events/{id}", tag = "events", request_body = UpdateEvent, security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = EventView), (status = 400, body = ProblemSchema), (status = 401, body = ProblemSchema),
        (status = 403, body = ProblemSchema), (status = 404, body = ProblemSchema)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateEvent>,
) -> Result<Json<EventView>, Problem> {
    let actor = caller.require(&[Role::Operator, Role::Admin])?;
    let now = to_micros(state.clock.now());
    let change = Change { actor_id: &actor.sub, actor_name: &actor.username, at: now };
    let row = state.catalog.update_event(&id, &change, |current| apply_update(current, &body, now)).await.map_err(
        |e| match e {
            crate::store::StoreError::NotFound => no_event(&id),
            other => other.into(),
        },
    )?;
    tracing::info!(event_id = %id, by = %actor.sub, "event updated");
    let mut view = EventView::from_row(&row);
    view.rewards = Some(state.catalog.rewards_of(&id).await?.iter().map(RewardView::from_row).collect());
    Ok(Json(view))
}

/// The event after `body`, validated as a whole; with its before/after views.
fn apply_update(current: &EventRow, body: &UpdateEvent, now: i64) -> Result<(EventRow, Value, Value), Problem> {
    let mut errors = Vec::new();
    let mut next = current.clone();
    if let Some(name) = &body.name {
        errors.extend(check_name(name).err());
        next.name = name.trim().to_owned();
    }
    if let Some(description) = &body.description {
        errors.extend(check_description(description).err());
        next.description = description.clone();
    }
    if let Some(status) = &body.status {
        match check_status(status, "status") {
            Ok(status) => next.status = status,
            Err(error) => errors.push(error),
        }
    }
    if let Some(zone) = &body.time_zone {
        match dates::time_zone(zone) {
            Ok(_) => next.time_zone = zone.clone(),
            Err(why) => errors.push(FieldError::new("timeZone", why)),
        }
    }
    let tz = dates::time_zone(&next.time_zone).unwrap_or(Tz::UTC);
    let start = match &body.start_date {
        Some(text) => parse_date(text, tz, Edge::Start, "startDate"),
        None => Ok(from_micros(current.start_at)),
    };
    let end = match &body.end_date {
        Some(text) => parse_date(text, tz, Edge::End, "endDate"),
        None => Ok(from_micros(current.end_at)),
    };
    let window = resolve_window(start, end, &mut errors);
    let condition = match &body.condition {
        Some(value) => Condition::parse(value, "condition").map_err(|e| errors.extend(e)).ok(),
        None => {
            serde_json::from_str(&current.condition).ok().and_then(|v: Value| Condition::parse(&v, "condition").ok())
        }
    };
    if let (Some(condition), Some(window)) = (&condition, &window) {
        check_possible(condition, window, tz, &mut errors);
    }
    if body.name.is_none()
        && body.description.is_none()
        && body.condition.is_none()
        && body.start_date.is_none()
        && body.end_date.is_none()
        && body.status.is_none()
        && body.time_zone.is_none()
    {
        errors.push(FieldError::new("$", "nothing to change"));
    }
    let (Some(condition), Some(window), true) = (condition, window, errors.is_empty()) else {
        return Err(Problem::fields(errors));
    };
    next.condition = condition.to_json().to_string();
    next.start_at = to_micros(window.start);
    next.end_at = to_micros(window.end);
    next.updated_at = now;
    Ok((next.clone(), EventView::from_row(current).json(), EventView::from_row(&next).json()))
}
