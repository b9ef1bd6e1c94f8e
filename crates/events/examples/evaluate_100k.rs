//! Condition evaluation for a player with 100,000 activities (`bench/evaluator.sh`).
//!
//! Fills a fresh store (SQLite; PostgreSQL when `REWARDS_BENCH_POSTGRES_URL`
//! is set) with 100,000 activities of one player over a year plus 100,000 of
//! other players, then times each condition type over a one-month event, next
//! to an unindexed scan of the same table as the baseline.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rewards_events::EventsSettings;
use rewards_events::activities::{Activity, insert};
use rewards_events::condition::Condition;
use rewards_events::evaluator::{Ledger, window_of};
use rewards_kit::clock::SharedClock;
use serde_json::json;

const PLAYER: &str = "player-1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = std::env::var("REWARDS_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("bench.db").display()));
    let state = rewards_events::open(&EventsSettings::default(), &url, SharedClock::system()).await?;
    let year = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap().timestamp_micros();
    let minute = 60_000_000i64;

    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..200_000i64 {
        let user = if i % 2 == 0 { PLAYER.to_owned() } else { format!("other-{}", i % 5000) };
        let (kind, attributes) = match (i / 2) % 10 {
            0..=5 => ("LOGIN", json!({})),
            6 | 7 => ("PVP_WIN", json!({ "mode": if i % 3 == 0 { "ranked" } else { "casual" } })),
            8 => ("QUEST_CLEAR", json!({ "questId": format!("Q-{}", i % 500) })),
            _ => ("LEVEL_UP", json!({ "level": (i / 2000) + 1 })),
        };
        batch.push(Activity {
            id: format!("a-{i}"),
            user_id: user,
            kind: kind.to_owned(),
            occurred_at: year + (i / 2) * 5 * minute,
            subject: attributes.get("questId").and_then(|v| v.as_str()).map(str::to_owned),
            amount: attributes.get("level").and_then(|v| v.as_i64()),
            attributes: attributes.to_string(),
        });
        if batch.len() == 1000 {
            insert(&state, &batch, year).await.map_err(|p| anyhow::anyhow!("{p}"))?;
            batch.clear();
        }
    }
    println!(
        "store: {url}\nloaded 200,000 activities (100,000 of one player) in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );

    let tz = "Asia/Seoul".parse()?;
    let month = window_of(
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 6, 30, 23, 59, 59).unwrap(),
        tz,
    );
    let all_year = window_of(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap(),
        tz,
    );
    let ledger = Ledger { store: state.store() };
    let cases = [
        ("loginDays 20 (a month)", json!({ "type": "loginDays", "days": 20 }), month),
        ("loginStreak 7 (a month)", json!({ "type": "loginStreak", "days": 7 }), month),
        ("loginDays 300 (the year)", json!({ "type": "loginDays", "days": 300 }), all_year),
        ("questClear (the year)", json!({ "type": "questClear", "questId": "Q-499" }), all_year),
        ("levelReached 40 (the year)", json!({ "type": "levelReached", "level": 40 }), all_year),
        (
            "activityCount 1000 ranked (the year)",
            json!({ "type": "activityCount", "activity": "PVP_WIN", "count": 1000, "match": { "mode": "ranked" } }),
            all_year,
        ),
        (
            "all of the above (the year)",
            json!({ "type": "all", "conditions": [
            { "type": "loginDays", "days": 300 }, { "type": "questClear", "questId": "Q-499" },
            { "type": "levelReached", "level": 40 }, { "type": "activityCount", "activity": "PVP_WIN", "count": 1000, "match": { "mode": "ranked" } }] }),
            all_year,
        ),
    ];

    let runs = 20;
    let baseline = time(runs, || async {
        rewards_kit::with_pool!(state.store(), |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM activities WHERE attributes LIKE '%never%'")
                .fetch_one(pool)
                .await
        })
        .map(drop)
    })
    .await?;
    println!("{:<40} {:>10} {:>12}  result", "condition", "ms", "x baseline");
    println!("{:<40} {:>10.2} {:>12}", "baseline: one unindexed scan of the table", ms(baseline), "1.00");
    for (name, condition, window) in cases {
        let condition = Condition::parse(&condition, "c").map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let summary = ledger.evaluate(PLAYER, &condition, window).await?.summary;
        let took = time(runs, || async {
            ledger.evaluate(PLAYER, &condition, window).await?;
            Ok::<_, sqlx::Error>(())
        })
        .await?;
        println!("{name:<40} {:>10.2} {:>12.2}  {summary}", ms(took), took.as_secs_f64() / baseline.as_secs_f64());
    }
    Ok(())
}

async fn time<F, Fut>(runs: u32, mut f: F) -> Result<Duration, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), sqlx::Error>>,
{
    f().await?;
    let started = Instant::now();
    for _ in 0..runs {
        f().await?;
    }
    Ok(started.elapsed() / runs)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
