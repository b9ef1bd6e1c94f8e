#!/usr/bin/env bash
# Claim throughput through the gateway, next to PostgreSQL's own single-insert
# rate (pgbench, prepared statements, one insert per transaction) measured in
# the same run on the same server.
#
# Three loads, each CONNECTIONS (64) connections for DURATION (10) seconds:
#   distinct: distinct players over many unlimited rewards (no two requests
#             contend for one row);
#   hot:      every request claims one limited-stock reward;
#   soldout:  every request claims a reward whose stock is gone (each is
#             refused OUT_OF_STOCK; the store's transaction count before and
#             after shows whether a refusal costs it a statement).
# Loopback only; needs wrk, pgbench and the local PostgreSQL (started by
# .ci/run's steps or: pg_ctlcluster --skip-systemctl-redirect 15 main start).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PLAYERS=${PLAYERS:-2000}
REWARDS=${REWARDS:-50}
PG_USER=${PG_USER:-postgres}
DB=rewards_bench
G=18190 A=18191 E=18192

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin rewards
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

psql -h 127.0.0.1 -U "$PG_USER" -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null

# The store's own rate: one prepared insert per transaction.
psql -h 127.0.0.1 -U "$PG_USER" -d "$DB" -qc "CREATE TABLE bench_inserts (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, reward_id TEXT NOT NULL, created_at BIGINT NOT NULL)"
echo "INSERT INTO bench_inserts (user_id, reward_id, created_at) VALUES ('u' || :client_id, 'r', 1);" > "$work/insert.sql"
pg_tps=$(pgbench -h 127.0.0.1 -U "$PG_USER" -n -M prepared -c "$CONNECTIONS" -j 2 -T "$DURATION" -f "$work/insert.sql" "$DB" 2>/dev/null \
  | awk '/^tps/ {print int($3)}')

# The platform, events on PostgreSQL; cheap password hashing so that making
# the players is quick (hashing is not what is measured), no rate limits.
RUST_LOG=warn REWARDS_ADMIN_PASSWORD=bench-admin-password \
REWARDS_AUTH__ARGON2_MEMORY_KIB=64 REWARDS_AUTH__ARGON2_ITERATIONS=1 REWARDS_AUTH__LOGIN_FAILURES_PER_ADDRESS=1000000 \
REWARDS_AUTH__SIGNUPS_PER_ADDRESS=0 \
REWARDS_GATEWAY__RATE_PER_ADDRESS=0 REWARDS_GATEWAY__RATE_PER_USER=0 \
REWARDS_EVENTS__DATABASE_URL="postgres://$PG_USER@127.0.0.1:5432/$DB" REWARDS_EVENTS__MAX_CONNECTIONS=64 \
  target/release/rewards up --data-dir "$work/data" --gateway-listen 127.0.0.1:$G --auth-listen 127.0.0.1:$A --events-listen 127.0.0.1:$E \
  >"$work/rewards.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$G/ready" >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$G" "$PLAYERS" "$REWARDS" "$work" <<'PY'
import json, sys, urllib.request, concurrent.futures
port, players, rewards, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if token: req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req) as r: return json.load(r)
admin = call("POST", "/auth-service/auth/login", {"username": "admin", "password": "bench-admin-password"})["access_token"]
event = call("POST", "/event-service/events", {"name": "bench", "condition": {"type": "none"}, "startDate": "2020-01-01",
             "endDate": "2099-12-31", "status": "ACTIVE"}, admin)["id"]
many = [call("POST", "/event-service/rewards", {"eventId": event, "name": f"r{i}", "type": "POINT", "details": {}, "quantity": 1}, admin)["id"]
        for i in range(rewards)]
hot = call("POST", "/event-service/rewards", {"eventId": event, "name": "hot", "type": "POINT", "details": {}, "quantity": 1,
            "stock": 1000000000, "perUserLimit": 1000}, admin)["id"]
gone = call("POST", "/event-service/rewards", {"eventId": event, "name": "gone", "type": "POINT", "details": {}, "quantity": 1,
             "stock": 1}, admin)["id"]
def player(i):
    name = f"bench{i}"
    call("POST", "/auth-service/auth/signup", {"username": name, "password": "password-123"})
    return call("POST", "/auth-service/auth/login", {"username": name, "password": "password-123"})["access_token"]
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    tokens = list(pool.map(player, range(players)))
# The last unit of `gone` goes before the storm (to a player the storm does not use).
call("POST", "/event-service/reward-claims", {"eventId": event, "rewardId": gone}, call("POST", "/auth-service/auth/login",
     {"username": "admin", "password": "bench-admin-password"})["access_token"])
def lua(name, rewards_):
    # Request i claims rewards_[(i / players) % #rewards_] as tokens[i % players]:
    # every (player, reward) pair once per cycle. Each wrk thread walks its own
    # stride (thread-local Lua states).
    with open(f"{work}/{name}.lua", "w") as f:
        f.write("local tokens = {\n" + "".join(f'  "{t}",\n' for t in tokens) + "}\n")
        f.write("local rewards = {\n" + "".join(f'  "{r}",\n' for r in rewards_) + "}\n")
        f.write("local n = 0\nlocal threads = {}\nwrk.method = 'POST'\nunexpected = 0\n")
        f.write("setup = function(thread)\n  thread:set('offset', #threads)\n  table.insert(threads, thread)\nend\n")
        # Every answer must be the load's own: 201, or 409 for the sold-out storm.
        want = 409 if name == "soldout" else 201
        f.write(f"response = function(status, headers, body)\n  if status ~= {want} then unexpected = unexpected + 1 end\nend\n")
        f.write("request = function()\n  local i = n * 2 + offset\n  n = n + 1\n")
        f.write("  local token = tokens[(i % #tokens) + 1]\n  local reward = rewards[(math.floor(i / #tokens) % #rewards) + 1]\n")
        f.write(f"  local body = '{{\"eventId\":\"{event}\",\"rewardId\":\"' .. reward .. '\"}}'\n")
        f.write("  return wrk.format(nil, '/event-service/reward-claims', {['content-type']='application/json', ['authorization']='Bearer ' .. token}, body)\nend\n")
        f.write("done = function(summary, latency, requests)\n  local bad = 0\n  for _, t in ipairs(threads) do bad = bad + t:get('unexpected') end\n")
        f.write("  io.write(string.format('RESULT %d %d %.3f %.3f\\n', summary.requests, bad, latency:percentile(50)/1000, latency:percentile(99)/1000))\nend\n")
lua("distinct", many)
lua("hot", [hot])
lua("soldout", [gone])
PY

rewards_pid=${pids[0]}
cpu_ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }

xacts() { psql -h 127.0.0.1 -U "$PG_USER" -d "$DB" -Atc "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
  sleep 1.2; psql -h 127.0.0.1 -U "$PG_USER" -d postgres -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$DB'"; }

run() { # script -> "answers/s unexpected p50 p99 platform_cpu_us postgres_cpu_us" (CPU per answer)
  local out r0 r1 p0 p1
  r0=$(cpu_ticks "$rewards_pid"); p0=$(cpu_ticks $(pgrep -x postgres))
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$work/$1.lua" "http://127.0.0.1:$G")
  r1=$(cpu_ticks "$rewards_pid"); p1=$(cpu_ticks $(pgrep -x postgres))
  python3 - "$out" "$DURATION" "$((r1 - r0))" "$((p1 - p0))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
out, duration, platform, postgres, hz = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
requests, errors, p50, p99 = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+)", out).groups()
ok = int(requests) - int(errors)  # answers as the load expects them
per = lambda ticks: ticks / hz / max(ok, 1) * 1e6
print(f"{ok / duration:.0f} {errors} {p50} {p99} {per(platform):.0f} {per(postgres):.0f}")
PY
}
read -r d_rate d_err d_p50 d_p99 d_cpu d_pg < <(run distinct)
read -r h_rate h_err h_p50 h_p99 h_cpu h_pg < <(run hot)
x0=$(xacts)
read -r s_rate s_err s_p50 s_p99 s_cpu s_pg < <(run soldout)
x1=$(xacts)
exact=$(psql -h 127.0.0.1 -U "$PG_USER" -d "$DB" -Atc \
  "SELECT (SELECT stock - remaining FROM rewards WHERE name = 'hot') = (SELECT COUNT(*) FROM reward_claims c JOIN rewards r ON r.id = c.reward_id WHERE r.name = 'hot' AND c.slot IS NOT NULL)")

printf '\n%s, %s connections, %s s each, on %s cores (wrk, PostgreSQL and the platform share them)\n' "$(date -u +%F)" "$CONNECTIONS" "$DURATION" "$(nproc)"
printf '%-44s %12s %10s %10s %10s %14s %14s\n' load 'per second' 'p50 ms' 'p99 ms' 'unexpected' 'platform us/a' 'postgres us/a'
printf '%-44s %12s\n' 'pgbench: one prepared insert per transaction' "$pg_tps"
printf '%-44s %12s %10s %10s %10s %14s %14s\n' 'claims, distinct players x many rewards' "$d_rate" "$d_p50" "$d_p99" "$d_err" "$d_cpu" "$d_pg"
printf '%-44s %12s %10s %10s %10s %14s %14s\n' 'claims, one hot limited-stock reward' "$h_rate" "$h_p50" "$h_p99" "$h_err" "$h_cpu" "$h_pg"
printf '%-44s %12s %10s %10s %10s %14s %14s\n' 'sold-out storm (every answer 409)' "$s_rate" "$s_p50" "$s_p99" "$s_err" "$s_cpu" "$s_pg"
echo "(per answer the load expects — 201, or 409 OUT_OF_STOCK in the storm: CPU of the platform's process — gateway, services — and of all of PostgreSQL)"
python3 -c "print(f'ratios to pgbench: distinct {$d_rate / $pg_tps:.2f}x, hot {$h_rate / $pg_tps:.2f}x (targets: >= 0.60x each, goal 1.0x; p99 < 50 ms)')"
python3 -c "print(f'CPU per granted claim: distinct {$d_cpu + $d_pg} us, hot {$h_cpu + $h_pg} us (target <= 110 us)')"
python3 -c "print(f'sold-out storm: {$s_rate} answers/s (target >= 15000); store transactions during it: {$x1 - $x0} for {int($s_rate * $DURATION)} answers (the payout poll takes ~{int($DURATION * 4)})')"
echo "hot reward stock arithmetic exact (granted = stock consumed): $exact"
# Every grant paid out: the payout pipeline kept up (or catches up shortly).
for _ in $(seq 1 60); do
  left=$(psql -h 127.0.0.1 -U "$PG_USER" -d "$DB" -Atc "SELECT COUNT(*) FROM reward_claims WHERE status = 'APPROVED'")
  [ "$left" = 0 ] && break
  sleep 0.5
done
paid=$(psql -h 127.0.0.1 -U "$PG_USER" -d "$DB" -Atc "SELECT COUNT(*) FROM reward_claims WHERE status = 'PAID'")
echo "payouts: $paid claims PAID, $left still waiting (checked up to 30 s after the runs)"
