//! Conditions checked against the facts: a player's activities inside the
//! event's window, with days counted in the event's time zone.
//!
//! Each leaf of the condition tree is one indexed query (by user, type and
//! time); day counting and streaks are pure functions ([`distinct_days`],
//! [`longest_streak`]) tested on their own. The result says what is met and
//! what is missing, in words a player can read ("2 of 3 login days").

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rewards_kit::clock::from_micros;
use rewards_kit::store::Store;
use rewards_kit::with_pool;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::condition::Condition;

/// The part of time a condition looks at.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: i64,
    pub end: i64,
    pub tz: Tz,
}

/// How far a player is toward a condition.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Progress {
    /// The condition's type.
    #[serde(rename = "type")]
    pub kind: String,
    pub met: bool,
    pub current: u64,
    pub required: u64,
    /// In words: "2 of 3 login days".
    pub summary: String,
    /// The parts of `all` / `any`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub conditions: Vec<Progress>,
}

impl Progress {
    fn leaf(kind: &str, current: u64, required: u64, what: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            met: current >= required,
            current,
            required,
            summary: format!("{current} of {required} {what}"),
            conditions: Vec::new(),
        }
    }
}

/// The calendar days of `tz` on which the instants (micros) fall.
pub fn days(instants: &[i64], tz: Tz) -> BTreeSet<NaiveDate> {
    instants.iter().map(|t| from_micros(*t).with_timezone(&tz).date_naive()).collect()
}

pub fn distinct_days(instants: &[i64], tz: Tz) -> u64 {
    days(instants, tz).len() as u64
}

/// The longest run of consecutive calendar days.
pub fn longest_streak(days: &BTreeSet<NaiveDate>) -> u64 {
    let mut best = 0;
    let mut run = 0;
    let mut previous: Option<NaiveDate> = None;
    for day in days {
        run = match previous {
            Some(p) if p.succ_opt() == Some(*day) => run + 1,
            _ => 1,
        };
        best = best.max(run);
        previous = Some(*day);
    }
    best
}

/// Whether an activity's attributes hold every `(key, value)` of `matching`.
pub fn attributes_match(attributes: &Map<String, Value>, matching: &Map<String, Value>) -> bool {
    matching.iter().all(|(k, v)| attributes.get(k) == Some(v))
}

fn parse_attributes(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The facts a condition is checked against, from the activity ledger.
pub struct Ledger<'a> {
    pub store: &'a Store,
}

impl Ledger<'_> {
    async fn times(&self, user: &str, kind: &str, w: Window) -> Result<Vec<i64>, sqlx::Error> {
        let sql = "SELECT occurred_at FROM activities WHERE user_id = $1 AND type = $2 \
                   AND occurred_at >= $3 AND occurred_at <= $4";
        with_pool!(self.store, |pool| {
            sqlx::query_scalar(sql).bind(user).bind(kind).bind(w.start).bind(w.end).fetch_all(pool).await
        })
    }

    async fn count(&self, user: &str, kind: &str, w: Window) -> Result<u64, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM activities WHERE user_id = $1 AND type = $2 \
                   AND occurred_at >= $3 AND occurred_at <= $4";
        let n: i64 = with_pool!(self.store, |pool| {
            sqlx::query_scalar(sql).bind(user).bind(kind).bind(w.start).bind(w.end).fetch_one(pool).await
        })?;
        Ok(n as u64)
    }

    /// Counts activities of `kind` whose attributes pass `keep`, reading in
    /// pages and stopping once `enough` are found.
    async fn count_where(
        &self,
        user: &str,
        kind: &str,
        w: Window,
        enough: u64,
        keep: impl Fn(&Map<String, Value>) -> bool,
    ) -> Result<u64, sqlx::Error> {
        const PAGE: i64 = 1000;
        // Keyset pages: each page starts after the last (time, id) seen.
        let sql = "SELECT occurred_at, id, attributes FROM activities WHERE user_id = $1 AND type = $2 \
                   AND occurred_at <= $4 AND (occurred_at > $3 OR (occurred_at = $3 AND id > $5)) \
                   ORDER BY occurred_at, id LIMIT $6";
        let mut found = 0;
        let (mut after_at, mut after_id) = (w.start - 1, String::new());
        loop {
            let rows: Vec<(i64, String, String)> = with_pool!(self.store, |pool| {
                sqlx::query_as(sql)
                    .bind(user)
                    .bind(kind)
                    .bind(after_at)
                    .bind(w.end)
                    .bind(&after_id)
                    .bind(PAGE)
                    .fetch_all(pool)
                    .await
            })?;
            found += rows.iter().filter(|(_, _, a)| keep(&parse_attributes(a))).count() as u64;
            match rows.last() {
                Some((at, id, _)) if found < enough && rows.len() as i64 == PAGE => {
                    (after_at, after_id) = (*at, id.clone());
                }
                _ => return Ok(found),
            }
        }
    }

    async fn highest_level(&self, user: &str, w: Window) -> Result<u64, sqlx::Error> {
        let sql = "SELECT MAX(amount) FROM activities WHERE user_id = $1 AND type = 'LEVEL_UP' \
                   AND occurred_at >= $2 AND occurred_at <= $3";
        let level: Option<i64> = with_pool!(self.store, |pool| {
            sqlx::query_scalar(sql).bind(user).bind(w.start).bind(w.end).fetch_one(pool).await
        })?;
        Ok(level.unwrap_or(0).max(0) as u64)
    }

    async fn cleared(&self, user: &str, quest: &str, w: Window) -> Result<bool, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM activities WHERE subject = $1 AND type = 'QUEST_CLEAR' AND user_id = $2 \
                   AND occurred_at >= $3 AND occurred_at <= $4";
        let n: i64 = with_pool!(self.store, |pool| {
            sqlx::query_scalar(sql).bind(quest).bind(user).bind(w.start).bind(w.end).fetch_one(pool).await
        })?;
        Ok(n > 0)
    }

    async fn invited(&self, user: &str, w: Window) -> Result<u64, sqlx::Error> {
        let sql = "SELECT COUNT(DISTINCT user_id) FROM activities WHERE subject = $1 AND type = 'SIGNUP' \
                   AND occurred_at >= $2 AND occurred_at <= $3";
        let n: i64 = with_pool!(self.store, |pool| {
            sqlx::query_scalar(sql).bind(user).bind(w.start).bind(w.end).fetch_one(pool).await
        })?;
        Ok(n as u64)
    }

    /// How far `user` is toward `condition` within `window`.
    pub fn evaluate<'a>(
        &'a self,
        user: &'a str,
        condition: &'a Condition,
        window: Window,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Progress, sqlx::Error>> + Send + 'a>> {
        Box::pin(async move {
            Ok(match condition {
                Condition::None => Progress::leaf("none", 1, 1, "(no condition)"),
                Condition::LoginDays { days } => {
                    let logins = self.times(user, "LOGIN", window).await?;
                    Progress::leaf("loginDays", distinct_days(&logins, window.tz), u64::from(*days), "login days")
                }
                Condition::LoginStreak { days } => {
                    let logins = self.times(user, "LOGIN", window).await?;
                    let streak = longest_streak(&self::days(&logins, window.tz));
                    Progress::leaf("loginStreak", streak, u64::from(*days), "consecutive login days")
                }
                Condition::InviteFriends { count } => Progress::leaf(
                    "inviteFriends",
                    self.invited(user, window).await?,
                    u64::from(*count),
                    "friends invited",
                ),
                Condition::QuestClear { quest_id } => {
                    let done = u64::from(self.cleared(user, quest_id, window).await?);
                    let mut p = Progress::leaf("questClear", done, 1, "quest cleared");
                    p.summary = if p.met {
                        format!("quest {quest_id} cleared")
                    } else {
                        format!("quest {quest_id} not cleared yet")
                    };
                    p
                }
                Condition::LevelReached { level } => {
                    let reached = self.highest_level(user, window).await?;
                    let mut p = Progress::leaf("levelReached", reached, u64::from(*level), "");
                    p.summary = format!("level {reached} of {level}");
                    p
                }
                Condition::ActivityCount { activity, count, matching } => {
                    let required = u64::from(*count);
                    let done = if matching.is_empty() {
                        self.count(user, activity, window).await?
                    } else {
                        self.count_where(user, activity, window, required, |a| attributes_match(a, matching)).await?
                    };
                    Progress::leaf("activityCount", done, required, &format!("{activity} activities"))
                }
                Condition::All(children) | Condition::Any(children) => {
                    let mut parts = Vec::with_capacity(children.len());
                    for child in children {
                        parts.push(self.evaluate(user, child, window).await?);
                    }
                    let done = parts.iter().filter(|p| p.met).count() as u64;
                    let all = matches!(condition, Condition::All(_));
                    let required = if all { parts.len() as u64 } else { 1 };
                    let summary = if all {
                        format!("{done} of {required} conditions met")
                    } else {
                        format!("{done} of {} options met (one is enough)", parts.len())
                    };
                    Progress {
                        kind: if all { "all" } else { "any" }.to_owned(),
                        met: done >= required,
                        current: done,
                        required,
                        summary,
                        conditions: parts,
                    }
                }
            })
        })
    }
}

/// The window of an event, as the evaluator reads it.
pub fn window_of(start: DateTime<Utc>, end: DateTime<Utc>, tz: Tz) -> Window {
    Window { start: start.timestamp_micros(), end: end.timestamp_micros(), tz }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn streaks_cross_month_and_year_ends() {
        let set: BTreeSet<NaiveDate> = [d(2026, 1, 30), d(2026, 1, 31), d(2026, 2, 1), d(2026, 2, 3)].into();
        assert_eq!(longest_streak(&set), 3);
        let new_year: BTreeSet<NaiveDate> = [d(2026, 12, 31), d(2027, 1, 1)].into();
        assert_eq!(longest_streak(&new_year), 2);
        assert_eq!(longest_streak(&BTreeSet::new()), 0);
    }

    #[test]
    fn days_are_counted_in_the_time_zone() {
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        // 14:59 and 15:00 UTC are two different days in Seoul, one in UTC.
        let a = Utc.with_ymd_and_hms(2026, 11, 30, 14, 59, 0).unwrap().timestamp_micros();
        let b = Utc.with_ymd_and_hms(2026, 11, 30, 15, 0, 0).unwrap().timestamp_micros();
        assert_eq!(distinct_days(&[a, b], seoul), 2);
        assert_eq!(distinct_days(&[a, b], Tz::UTC), 1);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn seoul() -> Tz {
            "Asia/Seoul".parse().unwrap()
        }

        proptest! {
            /// Order of arrival and duplicates never change the count.
            #[test]
            fn order_and_duplicates_do_not_matter(mut ts in prop::collection::vec(0i64..4_000_000_000_000_000, 0..60), dup in 0usize..5) {
                let expected = distinct_days(&ts, seoul());
                let streak = longest_streak(&days(&ts, seoul()));
                ts.reverse();
                let copies: Vec<i64> = ts.iter().take(dup).copied().collect();
                ts.extend(copies);
                prop_assert_eq!(distinct_days(&ts, seoul()), expected);
                prop_assert_eq!(longest_streak(&days(&ts, seoul())), streak);
            }

            /// A login on each of n consecutive local days, at any hour, is a
            /// streak of n, wherever the month ends.
            #[test]
            fn consecutive_local_days_make_a_streak(start in 0i64..20_000, n in 1i64..40, hours in prop::collection::vec(0u32..24, 40)) {
                let first = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap() + Duration::days(start);
                let ts: Vec<i64> = (0..n)
                    .map(|i| {
                        let local = (first + Duration::days(i)).and_hms_opt(hours[i as usize], 30, 0).unwrap();
                        seoul().from_local_datetime(&local).unwrap().timestamp_micros()
                    })
                    .collect();
                prop_assert_eq!(longest_streak(&days(&ts, seoul())), n as u64);
                prop_assert_eq!(distinct_days(&ts, seoul()), n as u64);
            }

            /// A missing day splits a streak in two.
            #[test]
            fn a_gap_breaks_the_streak(start in 0i64..20_000, before in 1i64..10, after in 1i64..10) {
                let first = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap() + Duration::days(start);
                let set: BTreeSet<NaiveDate> = (0..before).map(|i| first + Duration::days(i))
                    .chain((0..after).map(|i| first + Duration::days(before + 1 + i)))
                    .collect();
                prop_assert_eq!(longest_streak(&set), before.max(after) as u64);
            }

            /// The streak never exceeds the number of distinct days.
            #[test]
            fn a_streak_is_at_most_the_days(ts in prop::collection::vec(0i64..4_000_000_000_000_000, 0..80)) {
                let set = days(&ts, seoul());
                prop_assert!(longest_streak(&set) <= set.len() as u64);
            }
        }
    }
}
