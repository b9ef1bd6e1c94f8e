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

/// A page of the audit trail (for OpenAPI documents).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next_cursor: Option<String>,
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
