//! Statements that take many rows at once, for the grant batches and the
//! payout batches. A list travels as one parameter, so a statement's text is
//! the same whatever the batch's size (prepared once per connection): ids as
//! [`Ids`], rows as a JSON array unpacked by the engine's own functions.
//!
//! The statements are written so that their plans cannot turn into a scan of
//! a growing table, whatever the statistics say when a connection first
//! prepares them: ids are matched with `= ANY(array)` (an index probe per
//! id) on PostgreSQL, and per-row lookups go through `LATERAL`.

use rewards_kit::store::StoreKind;
use serde::Serialize;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo};
use sqlx::{Encode, Postgres, Sqlite, Type};

/// Ids bound as one parameter: a `text[]` on PostgreSQL, a JSON array on
/// SQLite; matched with [`in_list`].
#[derive(Debug, Clone)]
pub struct Ids(pub Vec<String>);

impl Ids {
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        Self(ids.into_iter().map(str::to_owned).collect())
    }
}

impl Type<Postgres> for Ids {
    fn type_info() -> PgTypeInfo {
        <Vec<String> as Type<Postgres>>::type_info()
    }
}

impl<'q> Encode<'q, Postgres> for Ids {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Vec<String> as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Sqlite> for Ids {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Ids {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(serde_json::to_string(&self.0)?, buf)
    }
}

/// `= ANY($n)` or `IN (...)`: a column is one of the [`Ids`] in parameter `$n`.
pub fn in_list(kind: StoreKind, n: usize) -> String {
    match kind {
        StoreKind::Postgres => format!("= ANY(${n})"),
        StoreKind::Sqlite => format!("IN (SELECT value FROM json_each(${n}))"),
    }
}

/// One claim's move from one status to another.
#[derive(Debug, Serialize)]
pub struct TransitionRow<'a> {
    pub id: String,
    pub claim_id: &'a str,
    pub from_status: Option<&'a str>,
    pub to_status: &'a str,
    pub actor_id: &'a str,
    pub reason: Option<&'a str>,
    pub at: i64,
}

/// Inserts the [`TransitionRow`]s in the JSON array `$1`.
pub fn insert_transitions(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Postgres => {
            "INSERT INTO claim_transitions (id, claim_id, from_status, to_status, actor_id, reason, at) \
             SELECT id, claim_id, from_status, to_status, actor_id, reason, at \
             FROM json_to_recordset($1::text::json) AS t(id text, claim_id text, from_status text, to_status text, \
             actor_id text, reason text, at bigint)"
        }
        StoreKind::Sqlite => {
            "INSERT INTO claim_transitions (id, claim_id, from_status, to_status, actor_id, reason, at) \
             SELECT value->>'id', value->>'claim_id', value->>'from_status', value->>'to_status', \
             value->>'actor_id', value->>'reason', value->>'at' FROM json_each($1)"
        }
    }
}

pub fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}
