#!/usr/bin/env bash
# The gateway against nginx, on this machine, in one go.
#
# The same authenticated GET (Authorization: Bearer <a real access token>)
# against (a) a trivial upstream directly, (b) nginx with 2 workers proxying
# to it with keep-alive, (c) the rewards gateway proxying to it (token
# verified, route rule checked, identity vouched for). Prints throughput, p50
# and p99 for each and the gateway's ratios to nginx.
#
# Needs wrk and nginx (installed with apt-get when missing). Loopback only,
# bounded: DURATION seconds per run (default 10) at CONNECTIONS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
UPSTREAM_PORT=18080 NGINX_PORT=18081 GATEWAY_PORT=18090 AUTH_PORT=18091 EVENTS_PORT=18092

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx

cargo build --release --quiet --bin rewards --example trivial_upstream -p rewards -p rewards-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

target/release/examples/trivial_upstream "127.0.0.1:$UPSTREAM_PORT" & pids+=($!)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/health"

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
wait_for "http://127.0.0.1:$NGINX_PORT/hello"

# The platform with request logging at warn (access logs cost CPU per request)
# and rate limits off (one client address sends everything).
RUST_LOG=warn REWARDS_ADMIN_PASSWORD=bench-admin-password \
REWARDS_GATEWAY__RATE_PER_ADDRESS=0 REWARDS_GATEWAY__RATE_PER_USER=0 \
  target/release/rewards up --data-dir "$work/data" \
    --gateway-listen "127.0.0.1:$GATEWAY_PORT" --auth-listen "127.0.0.1:$AUTH_PORT" --events-listen "127.0.0.1:$EVENTS_PORT" \
    >"$work/rewards.log" 2>&1 & pids+=($!)
wait_for "http://127.0.0.1:$GATEWAY_PORT/ready"

token=$(curl -fs -X POST "http://127.0.0.1:$GATEWAY_PORT/auth-service/auth/login" -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-admin-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -fs -X POST "http://127.0.0.1:$GATEWAY_PORT/gateway/services" -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"name\":\"bench\",\"prefix\":\"/bench\",\"instances\":[\"http://127.0.0.1:$UPSTREAM_PORT\"],
       \"routes\":[{\"method\":\"GET\",\"path\":\"/hello\",\"roles\":[\"USER\",\"ADMIN\"]}]}" >/dev/null
test "$(curl -fs -H "authorization: Bearer $token" "http://127.0.0.1:$GATEWAY_PORT/bench/hello")" = hello

cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }

run() { # name url pids... -> "rps p50_ms p99_ms non2xx cpu_us_per_request"
  local out before after
  before=$(cpu_ticks "${@:3}")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $token" "$2")
  after=$(cpu_ticks "${@:3}")
  python3 - "$out" "$((after - before))" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import re, sys
out, ticks, hz, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu_us = ticks / hz / (rps * duration) * 1e6
print(f"{rps:.0f} {ms('50%'):.3f} {ms('99%'):.3f} {errors.group(1) if errors else 0} {cpu_us:.1f}")
PY
}

echo "warming up..."
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$GATEWAY_PORT/bench/hello" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$NGINX_PORT/hello" >/dev/null

upstream_pid=${pids[0]}
nginx_workers=$(pgrep -f "nginx: worker process" | tr '\n' ' ')
rewards_pid=${pids[2]}
# shellcheck disable=SC2086
read -r d_rps d_p50 d_p99 d_err d_cpu < <(run direct "http://127.0.0.1:$UPSTREAM_PORT/hello" "$upstream_pid")
# shellcheck disable=SC2086
read -r n_rps n_p50 n_p99 n_err n_cpu < <(run nginx "http://127.0.0.1:$NGINX_PORT/hello" $nginx_workers)
read -r g_rps g_p50 g_p99 g_err g_cpu < <(run gateway "http://127.0.0.1:$GATEWAY_PORT/bench/hello" "$rewards_pid")

printf '\n%s, %s connections, %s s each, wrk with %s threads on the same %s cores\n' "$(date -u +%F)" "$CONNECTIONS" "$DURATION" "$THREADS" "$(nproc)"
printf '%-28s %12s %10s %10s %8s %14s\n' target 'req/s' 'p50 ms' 'p99 ms' 'non-2xx' 'CPU us/req'
printf '%-28s %12s %10s %10s %8s %14s\n' '(a) upstream directly' "$d_rps" "$d_p50" "$d_p99" "$d_err" "$d_cpu"
printf '%-28s %12s %10s %10s %8s %14s\n' '(b) nginx, 2 workers' "$n_rps" "$n_p50" "$n_p99" "$n_err" "$n_cpu"
printf '%-28s %12s %10s %10s %8s %14s\n' '(c) rewards gateway' "$g_rps" "$g_p50" "$g_p99" "$g_err" "$g_cpu"
python3 - "$g_rps" "$n_rps" "$g_p99" "$n_p99" <<'PY'
import sys
g, n, gp, np_ = map(float, sys.argv[1:])
print(f"gateway / nginx throughput: {g / n:.2f}x   p99: {gp / np_:.2f}x   (target: >= 1.00x throughput, p99 < 1 ms)")
PY
