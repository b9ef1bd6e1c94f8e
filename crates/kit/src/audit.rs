//! The audit trail's shape, the same in every service: who changed which
//! entity, when, and what it was before and after.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::from_micros;

/// One `audit_log` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: String,
    pub created_at: i64,
    pub actor_id: String,
    pub actor_name: String,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    /// JSON documents.
    pub before: Option<String>,
    pub after: Option<String>,
}

/// One recorded change, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: AuditActor,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditActor {
    pub id: String,
    pub username: String,
}

impl From<AuditRecord> for AuditView {
    fn from(record: AuditRecord) -> Self {
        let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
        Self {
            id: record.id,
            at: from_micros(record.created_at),
            actor: AuditActor { id: record.actor_id, username: record.actor_name },
            entity: record.entity,
            entity_id: record.entity_id,
            action: record.action,
            before: json(record.before),
            after: json(record.after),
        }
    }
}

/// Which records of the trail to list.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditFilter<'a> {
    pub entity: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    pub actor: Option<&'a str>,
}

/// A page of a service's `audit_log`, newest first.
pub async fn list(
    store: &crate::store::Store,
    filter: AuditFilter<'_>,
    page: &crate::page::PageRequest,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let sql = format!(
        "SELECT id, created_at, actor_id, actor_name, entity, entity_id, action, before, after FROM audit_log \
         WHERE {keyset} AND ($3 IS NULL OR entity = $3) AND ($4 IS NULL OR entity_id = $4) \
         AND ($5 IS NULL OR actor_id = $5) ORDER BY created_at DESC, id DESC LIMIT $6",
        keyset = crate::page::keyset_condition(1, 2)
    );
    let (at, id) = page.bounds();
    crate::with_pool!(store, |pool| {
        sqlx::query_as::<_, AuditRecord>(&sql)
            .bind(at)
            .bind(&id)
            .bind(filter.entity)
            .bind(filter.entity_id)
            .bind(filter.actor)
            .bind(page.fetch())
            .fetch_all(pool)
            .await
    })
}
