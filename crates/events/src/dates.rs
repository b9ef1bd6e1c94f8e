//! Event dates: `YYYY-MM-DD` (the whole day in the event's time zone) or an
//! RFC 3339 instant. Windows are inclusive at both ends.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Which end of the window a date names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Start,
    End,
}

/// A date or instant as an instant: a `YYYY-MM-DD` start is that day's first
/// microsecond in `tz`, an end its last.
pub fn parse(text: &str, tz: Tz, edge: Edge) -> Result<DateTime<Utc>, String> {
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is neither YYYY-MM-DD nor an RFC 3339 instant"))?;
    match edge {
        Edge::Start => Ok(start_of_day(date, tz)),
        Edge::End => {
            let next = date.succ_opt().ok_or_else(|| format!("`{text}` is out of range"))?;
            Ok(start_of_day(next, tz) - Duration::microseconds(1))
        }
    }
}

/// The first instant of `date` in `tz` (after a daylight-saving gap at
/// midnight, the first that exists).
pub fn start_of_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    (0..=3)
        .find_map(|hour| tz.from_local_datetime(&date.and_time(NaiveTime::from_hms_opt(hour, 0, 0)?)).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| date.and_time(NaiveTime::MIN).and_utc())
}

/// How many calendar days of `tz` the window touches.
pub fn days_in_window(start: DateTime<Utc>, end: DateTime<Utc>, tz: Tz) -> u32 {
    let first = start.with_timezone(&tz).date_naive();
    let last = end.with_timezone(&tz).date_naive();
    ((last - first).num_days() + 1).clamp(0, i64::from(u32::MAX)) as u32
}

/// A configured or requested time zone name.
pub fn time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| format!("unknown time zone `{name}` (use an IANA name such as Asia/Seoul)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seoul() -> Tz {
        time_zone("Asia/Seoul").unwrap()
    }

    #[test]
    fn a_date_is_the_whole_day_in_the_time_zone() {
        let start = parse("2026-12-01", seoul(), Edge::Start).unwrap();
        let end = parse("2026-12-01", seoul(), Edge::End).unwrap();
        assert_eq!(start.to_rfc3339(), "2026-11-30T15:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-12-01T14:59:59.999999+00:00");
        assert_eq!(days_in_window(start, end, seoul()), 1);
        let utc = parse("2026-12-01", Tz::UTC, Edge::Start).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-12-01T00:00:00+00:00");
    }

    #[test]
    fn instants_are_taken_as_they_are() {
        let t = parse("2026-12-01T09:30:00+09:00", seoul(), Edge::End).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T00:30:00+00:00");
        assert!(parse("2026-13-01", seoul(), Edge::Start).is_err());
        assert!(parse("yesterday", seoul(), Edge::Start).is_err());
        assert!(time_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn daylight_saving_gaps_at_midnight_start_at_the_first_real_instant() {
        // Chile skips 00:00-01:00 when summer time starts (2026-09-06).
        let santiago = time_zone("America/Santiago").unwrap();
        let start = parse("2026-09-06", santiago, Edge::Start).unwrap();
        assert_eq!(start.with_timezone(&santiago).date_naive(), NaiveDate::from_ymd_opt(2026, 9, 6).unwrap());
    }
}
