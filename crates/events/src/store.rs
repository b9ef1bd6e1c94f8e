//! The events service's catalog store: events, rewards and the audit trail,
//! on SQLite or PostgreSQL (one set of queries, `$n` placeholders).
//!
//! Every change and its audit record commit together. Updates read the row
//! inside the writing transaction (locked with `FOR UPDATE` on PostgreSQL;
//! SQLite's `BEGIN IMMEDIATE` holds the write lock), so two operators editing
//! one reward cannot lose each other's change, and stock arithmetic stays in
//! that transaction.

use std::sync::Arc;

use rewards_kit::page::{PageRequest, keyset_condition};
use rewards_kit::store::Store;
use rewards_kit::{Problem, with_pool, with_write_tx};
use serde_json::Value;

use crate::domain::EventStatus;
use crate::targets::{Target, Targets};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub condition: String,
    pub start_at: i64,
    pub end_at: i64,
    pub time_zone: String,
    pub status: EventStatus,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RewardRow {
    pub id: String,
    pub event_id: String,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub details: String,
    pub quantity: i64,
    pub stock: Option<i64>,
    pub remaining: Option<i64>,
    pub per_user_limit: i64,
    pub requires_approval: bool,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Who made a change, and the record of it.
pub struct Change<'a> {
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub at: i64,
}

/// Filters of the event list.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub status: Option<EventStatus>,
    /// Only events whose window contains this instant (micros).
    pub active_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Refused(Problem),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl From<StoreError> for Problem {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Problem::not_found("no such resource"),
            StoreError::Refused(problem) => problem,
            StoreError::Sql(err) => err.into(),
        }
    }
}

const EVENT_COLUMNS: &str =
    "id, name, description, condition, start_at, end_at, time_zone, status, created_by, created_at, updated_at";
const REWARD_COLUMNS: &str = "id, event_id, name, type, details, quantity, stock, remaining, per_user_limit, \
                              requires_approval, created_by, created_at, updated_at";
const INSERT_AUDIT: &str = "INSERT INTO audit_log (id, created_at, actor_id, actor_name, entity, entity_id, action, before, after) \
                            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Records one change in the audit trail, inside the transaction `$tx`.
macro_rules! audit {
    ($tx:ident, $change:expr, $entity:expr, $id:expr, $action:expr, $before:expr, $after:expr) => {
        sqlx::query(INSERT_AUDIT)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind($change.at)
            .bind($change.actor_id)
            .bind($change.actor_name)
            .bind($entity)
            .bind($id)
            .bind($action)
            .bind($before.map(|v: Value| v.to_string()))
            .bind($after.map(|v: Value| v.to_string()))
            .execute(&mut *$tx)
            .await?
    };
}

#[derive(Debug, Clone)]
pub struct CatalogStore {
    store: Store,
    /// The claim path's memory of the catalog; every change here forgets
    /// what it touched.
    targets: Arc<Targets>,
}

impl CatalogStore {
    pub fn new(store: Store, claim_cache: std::time::Duration) -> Self {
        Self { store, targets: Arc::new(Targets::new(claim_cache)) }
    }

    /// Forgets what the claim path remembers of a reward (it changed).
    pub fn forget_target(&self, reward_id: &str) {
        self.targets.forget_reward(reward_id);
    }

    /// A reward of an event with what a claim needs of both, or `None` when
    /// there is no such reward of that event.
    pub async fn claim_target(&self, event_id: &str, reward_id: &str) -> Result<Option<Arc<Target>>, Problem> {
        if let Some(target) = self.targets.get(reward_id) {
            return Ok(Some(target).filter(|t| t.event.id == event_id));
        }
        let _turn = self.targets.read_turn(reward_id).await;
        let target = match self.targets.get(reward_id) {
            Some(target) => target,
            None => {
                let read_in = self.targets.generation();
                // The versions first: a change landing between these reads
                // pairs new rows with old versions, which a grant refuses
                // (and the claim reads again) — never the other way round.
                let sql =
                    "SELECT r.version, e.version FROM rewards r JOIN events e ON e.id = r.event_id WHERE r.id = $1";
                let versions: Option<(i64, i64)> =
                    with_pool!(&self.store, |pool| sqlx::query_as(sql).bind(reward_id).fetch_optional(pool).await)?;
                let Some(versions) = versions else { return Ok(None) };
                let Some(reward) = self.reward(reward_id).await? else { return Ok(None) };
                let Some(event) = self.event(&reward.event_id).await? else { return Ok(None) };
                let target = Target::new(event, reward, versions).map(Arc::new).ok_or_else(|| {
                    Problem::internal_from(format_args!("reward {reward_id}: its event's condition does not parse"))
                })?;
                self.targets.put(target.clone(), read_in);
                target
            }
        };
        Ok(Some(target).filter(|t| t.event.id == event_id))
    }

    pub fn inner(&self) -> &Store {
        &self.store
    }

    fn for_update(&self) -> &'static str {
        match self.store {
            Store::Postgres(_) => " FOR UPDATE",
            Store::Sqlite(_) => "",
        }
    }

    pub async fn insert_event(&self, row: &EventRow, change: &Change<'_>, view: Value) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
        with_write_tx!(&self.store, |tx| {
            sqlx::query(&sql)
                .bind(&row.id)
                .bind(&row.name)
                .bind(&row.description)
                .bind(&row.condition)
                .bind(row.start_at)
                .bind(row.end_at)
                .bind(&row.time_zone)
                .bind(row.status)
                .bind(&row.created_by)
                .bind(row.created_at)
                .bind(row.updated_at)
                .execute(&mut *tx)
                .await?;
            audit!(tx, change, "event", &row.id, "event.create", None, Some(view));
        });
        Ok(())
    }

    pub async fn event(&self, id: &str) -> Result<Option<EventRow>, sqlx::Error> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
        with_pool!(&self.store, |pool| sqlx::query_as::<_, EventRow>(&sql).bind(id).fetch_optional(pool).await)
    }

    pub async fn list_events(&self, filter: &EventFilter, page: &PageRequest) -> Result<Vec<EventRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE {keyset} \
             AND ($3 IS NULL OR status = $3) \
             AND ($4 IS NULL OR (start_at <= $4 AND end_at >= $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5",
            keyset = keyset_condition(1, 2)
        );
        let (at, id) = page.bounds();
        with_pool!(&self.store, |pool| {
            sqlx::query_as::<_, EventRow>(&sql)
                .bind(at)
                .bind(&id)
                .bind(filter.status)
                .bind(filter.active_at)
                .bind(page.fetch())
                .fetch_all(pool)
                .await
        })
    }

    /// Reads the event inside a write transaction, lets `change_row` produce
    /// the new row (or refuse), writes it and records the change.
    pub async fn update_event(
        &self,
        id: &str,
        change: &Change<'_>,
        change_row: impl FnOnce(&EventRow) -> Result<(EventRow, Value, Value), Problem>,
    ) -> Result<EventRow, StoreError> {
        let select = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1{}", self.for_update());
        let update = "UPDATE events SET name = $1, description = $2, condition = $3, start_at = $4, end_at = $5, \
                      time_zone = $6, status = $7, updated_at = $8, version = version + 1 WHERE id = $9";
        let updated = with_write_tx!(&self.store, |tx| {
            let current = sqlx::query_as::<_, EventRow>(&select)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let (next, before, after) = change_row(&current).map_err(StoreError::Refused)?;
            sqlx::query(update)
                .bind(&next.name)
                .bind(&next.description)
                .bind(&next.condition)
                .bind(next.start_at)
                .bind(next.end_at)
                .bind(&next.time_zone)
                .bind(next.status)
                .bind(next.updated_at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit!(tx, change, "event", id, "event.update", Some(before), Some(after));
            next
        });
        self.targets.forget_event(id);
        Ok(updated)
    }

    /// Creates a reward; a missing event is [`StoreError::NotFound`] (the
    /// foreign key decides, not a check before the insert).
    pub async fn insert_reward(&self, row: &RewardRow, change: &Change<'_>, view: Value) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO rewards ({REWARD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        let result: Result<(), sqlx::Error> = async {
            with_write_tx!(&self.store, |tx| {
                sqlx::query(&sql)
                    .bind(&row.id)
                    .bind(&row.event_id)
                    .bind(&row.name)
                    .bind(&row.kind)
                    .bind(&row.details)
                    .bind(row.quantity)
                    .bind(row.stock)
                    .bind(row.remaining)
                    .bind(row.per_user_limit)
                    .bind(row.requires_approval)
                    .bind(&row.created_by)
                    .bind(row.created_at)
                    .bind(row.updated_at)
                    .execute(&mut *tx)
                    .await?;
                audit!(tx, change, "reward", &row.id, "reward.create", None, Some(view));
            });
            Ok(())
        }
        .await;
        match result {
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => Err(StoreError::NotFound),
            other => other.map_err(StoreError::from),
        }
    }

    pub async fn reward(&self, id: &str) -> Result<Option<RewardRow>, sqlx::Error> {
        let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE id = $1");
        with_pool!(&self.store, |pool| sqlx::query_as::<_, RewardRow>(&sql).bind(id).fetch_optional(pool).await)
    }

    /// An event's rewards, oldest first (the order an operator added them).
    pub async fn rewards_of(&self, event_id: &str) -> Result<Vec<RewardRow>, sqlx::Error> {
        let sql =
            format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE event_id = $1 ORDER BY created_at, id LIMIT 1000");
        with_pool!(&self.store, |pool| sqlx::query_as::<_, RewardRow>(&sql).bind(event_id).fetch_all(pool).await)
    }

    pub async fn list_rewards(
        &self,
        event_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Vec<RewardRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {REWARD_COLUMNS} FROM rewards WHERE {keyset} AND ($3 IS NULL OR event_id = $3) \
             ORDER BY created_at DESC, id DESC LIMIT $4",
            keyset = keyset_condition(1, 2)
        );
        let (at, id) = page.bounds();
        with_pool!(&self.store, |pool| {
            sqlx::query_as::<_, RewardRow>(&sql)
                .bind(at)
                .bind(&id)
                .bind(event_id)
                .bind(page.fetch())
                .fetch_all(pool)
                .await
        })
    }

    /// Like [`Self::update_event`], for a reward.
    pub async fn update_reward(
        &self,
        id: &str,
        change: &Change<'_>,
        change_row: impl FnOnce(&RewardRow) -> Result<(RewardRow, Value, Value), Problem>,
    ) -> Result<RewardRow, StoreError> {
        let select = format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE id = $1{}", self.for_update());
        let update = "UPDATE rewards SET name = $1, type = $2, details = $3, quantity = $4, stock = $5, remaining = $6, \
                      per_user_limit = $7, requires_approval = $8, updated_at = $9, version = version + 1 WHERE id = $10";
        let updated = with_write_tx!(&self.store, |tx| {
            let current = sqlx::query_as::<_, RewardRow>(&select)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let (next, before, after) = change_row(&current).map_err(StoreError::Refused)?;
            sqlx::query(update)
                .bind(&next.name)
                .bind(&next.kind)
                .bind(&next.details)
                .bind(next.quantity)
                .bind(next.stock)
                .bind(next.remaining)
                .bind(next.per_user_limit)
                .bind(next.requires_approval)
                .bind(next.updated_at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit!(tx, change, "reward", id, "reward.update", Some(before), Some(after));
            next
        });
        self.targets.forget_reward(id);
        Ok(updated)
    }
}
