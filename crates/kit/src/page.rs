//! Keyset pagination: `?limit=` (default 20, max 100) and an opaque
//! `?cursor=`; answers `{"items": [...], "nextCursor": "..." | null}`.
//!
//! Lists are ordered newest first by `(created_at, id)`; the cursor holds the
//! last item's pair, and the next page starts strictly after it, so pages
//! stay stable while new items are inserted (they land before page one).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

use crate::problem::Problem;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// A position in a newest-first list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The item's creation time in microseconds.
    pub at: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        B64.encode(format!("{}:{}", self.at, self.id))
    }

    pub fn decode(text: &str) -> Result<Self, Problem> {
        let bad = || Problem::invalid_field("cursor", "not a cursor this service issued");
        let raw = B64.decode(text).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (at, id) = raw.split_once(':').ok_or_else(bad)?;
        Ok(Self { at: at.parse().map_err(|_| bad())?, id: id.to_owned() })
    }
}

/// A validated page request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, Problem> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::invalid_field("limit", format!("must be between 1 and {MAX_LIMIT}")));
        }
        let after = cursor.filter(|c| !c.is_empty()).map(Cursor::decode).transpose()?;
        Ok(Self { limit, after })
    }

    /// How many rows to fetch: one more than the page, to know if there is a next.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The cursor bounds for SQL: `(at, id) < (after_at, after_id)`; the
    /// first page starts after `(i64::MAX, "")`.
    pub fn bounds(&self) -> (i64, String) {
        match &self.after {
            Some(c) => (c.at, c.id.clone()),
            None => (i64::MAX, String::new()),
        }
    }
}

/// One page of a list (also its OpenAPI schema: `body = Page<EventView>`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds the page from rows fetched with [`PageRequest::fetch`]; `key`
    /// gives an item's position.
    pub fn from_rows(mut rows: Vec<T>, request: &PageRequest, key: impl Fn(&T) -> Cursor) -> Self {
        let more = rows.len() > request.limit as usize;
        rows.truncate(request.limit as usize);
        let next_cursor = if more { rows.last().map(|last| key(last).encode()) } else { None };
        Self { items: rows, next_cursor }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

/// The SQL condition selecting rows after a cursor, newest first, for a table
/// with `created_at` (micros) and `id` columns; the numbered parameters take
/// [`PageRequest::bounds`].
pub fn keyset_condition(at_param: usize, id_param: usize) -> String {
    format!("(created_at < ${at_param} OR (created_at = ${at_param} AND id < ${id_param}))")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_400() {
        let c = Cursor { at: 1_700_000_000_000_000, id: "01abc:def".into() };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for junk in ["!!!", "bm9jb2xvbg", "YWJjOmRlZg"] {
            let err = Cursor::decode(junk).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{junk}");
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(PageRequest::parse(Some(100), None).unwrap().limit, 100);
        assert!(PageRequest::parse(Some(0), None).is_err());
        assert!(PageRequest::parse(Some(101), None).is_err());
    }

    #[test]
    fn a_page_knows_whether_more_follow() {
        let request = PageRequest::parse(Some(2), None).unwrap();
        let key = |n: &i64| Cursor { at: *n, id: n.to_string() };
        let page = Page::from_rows(vec![9, 8, 7], &request, key);
        assert_eq!(page.items, [9, 8]);
        assert_eq!(Cursor::decode(page.next_cursor.as_deref().unwrap()).unwrap().at, 8);
        let last = Page::from_rows(vec![9, 8], &request, key);
        assert_eq!(last.next_cursor, None);
    }
}
