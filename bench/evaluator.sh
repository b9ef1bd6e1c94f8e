#!/usr/bin/env bash
# Condition evaluation for a player with 100,000 activities, next to an
# unindexed scan of the same table measured in the same run.
# SQLite by default; REWARDS_BENCH_POSTGRES_URL=postgres://... for PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -p rewards-events --example evaluate_100k
