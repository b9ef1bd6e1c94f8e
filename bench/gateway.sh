#!/usr/bin/env bash
# The gateway against nginx, on this machine, in one go.
#
# The same authenticated GET (Authorization: Bearer <a real access token>)
# against (a) a trivial upstream directly, (b) nginx with 2 workers proxying
# to it with keep-alive, (c) the rewards gateway proxying to it (token
# verified, route rule checked, identity vouched for, metrics counted), and
# (d) for reference, bare hyper forwarding served the way the gateway serves
# (no duties at all). Prints throughput, p50, p99 and CPU per request for
# each, and the gateway's ratios to nginx.
#
# The load generator shares the cores with what it measures, so single runs
# swing by 10 % or more: every target runs ROUNDS times, interleaved, and the
# medians are compared.
#
# Run flat out, the targets are saturated and their p99 is mostly time spent
# queued behind the other processes on the same two cores (the upstream
# alone, driven directly, shows a p99 of several milliseconds that way). So
# each round also paces the same requests at RATE per second in all (default
# 4000, a tenth of what each target can take) over the same CONNECTIONS
# (`paced_load`, an example of the gateway crate, which times each request
# from its write to its whole answer) and reports the latency a client sees
# then.
#
# Needs wrk and nginx (installed with apt-get when missing). Loopback
# only, bounded: DURATION seconds per run (default 8) at CONNECTIONS
# (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-4000}
UPSTREAM_PORT=18080 NGINX_PORT=18081 BARE_PORT=18083 GATEWAY_PORT=18090 AUTH_PORT=18091 EVENTS_PORT=18092

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx

cargo build --release --quiet --bin rewards --example trivial_upstream --example bare_forwarder --example paced_load -p rewards -p rewards-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

target/release/examples/trivial_upstream "127.0.0.1:$UPSTREAM_PORT" & pids+=($!)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/health"

# nginx in the foreground, so that it stays in this session's scheduling
# group like everything else measured here.
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

target/release/examples/bare_forwarder "127.0.0.1:$BARE_PORT" "127.0.0.1:$UPSTREAM_PORT" /bench & pids+=($!)
wait_for "http://127.0.0.1:$BARE_PORT/bench/hello"

# The gateway alone in its process (as deployed), the auth service that
# signs the token in another. Request logging at warn (access logs cost CPU
# per request), rate limits off (one client address sends everything).
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
RUST_LOG=warn REWARDS_IDENTITY_SECRET=$secret REWARDS_ADMIN_PASSWORD=bench-admin-password \
REWARDS_DATA_DIR="$work/data" REWARDS_AUTH__LISTEN="127.0.0.1:$AUTH_PORT" \
  target/release/rewards auth >"$work/auth.log" 2>&1 & pids+=($!)
wait_for "http://127.0.0.1:$AUTH_PORT/health"
RUST_LOG=warn REWARDS_IDENTITY_SECRET=$secret \
REWARDS_GATEWAY__LISTEN="127.0.0.1:$GATEWAY_PORT" REWARDS_GATEWAY__AUTH_URL="http://127.0.0.1:$AUTH_PORT" \
REWARDS_GATEWAY__EVENTS_URL="http://127.0.0.1:$EVENTS_PORT" \
REWARDS_GATEWAY__RATE_PER_ADDRESS=0 REWARDS_GATEWAY__RATE_PER_USER=0 \
  target/release/rewards gateway >"$work/gateway.log" 2>&1 & pids+=($!)
gateway_pid=$!
wait_for "http://127.0.0.1:$GATEWAY_PORT/auth-service/health"

token=$(curl -fs -X POST "http://127.0.0.1:$GATEWAY_PORT/auth-service/auth/login" -H 'content-type: application/json' \
  -d '{"username":"admin","password":"bench-admin-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -fs -X POST "http://127.0.0.1:$GATEWAY_PORT/gateway/services" -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"name\":\"bench\",\"prefix\":\"/bench\",\"instances\":[\"http://127.0.0.1:$UPSTREAM_PORT\"],
       \"routes\":[{\"method\":\"GET\",\"path\":\"/hello\",\"roles\":[\"USER\",\"ADMIN\"]}]}" >/dev/null
test "$(curl -fs -H "authorization: Bearer $token" "http://127.0.0.1:$GATEWAY_PORT/bench/hello")" = hello

cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }

# Runs a load command that prints "rps p50_ms p99_ms errors" while counting
# the CPU of the given processes; prints that line with the CPU microseconds
# per request appended.
with_cpu() { # "pids" command...
  local pids=$1 out before after
  shift
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids)
  out=$("$@")
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  python3 - "$out" "$((after - before))" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import sys
(rps, p50, p99, errors), ticks, hz, duration = sys.argv[1].split(), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print(f"{rps} {p50} {p99} {errors} {ticks / hz / (float(rps) * duration) * 1e6:.1f}")
PY
}

wrk_load() { # url -> "rps p50_ms p99_ms non2xx"
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $token" "$1")
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(f"{rps:.0f} {ms('50%'):.3f} {ms('99%'):.3f} {errors.group(1) if errors else 0}")
PY
}

run() { # url pids... -> "rps p50_ms p99_ms non2xx cpu_us_per_request", flat out
  with_cpu "${*:2}" wrk_load "$1"
}

paced() { # addr path pids... -> "rps p50_ms p99_ms errors cpu_us_per_request", at RATE
  with_cpu "${*:3}" target/release/examples/paced_load "$1" "$2" "$CONNECTIONS" "$RATE" "$DURATION" "$token"
}

echo "warming up..."
for url in "http://127.0.0.1:$GATEWAY_PORT/bench/hello" "http://127.0.0.1:$NGINX_PORT/hello" "http://127.0.0.1:$BARE_PORT/bench/hello"; do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $token" "$url" >/dev/null
done

upstream_pid=${pids[0]}
bare_pid=${pids[2]}
nginx_workers=$(pgrep -f "nginx: worker process" | tr '\n' ' ')
results="$work/results"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS..."
  echo "direct $(run "http://127.0.0.1:$UPSTREAM_PORT/hello" "$upstream_pid")" >>"$results"
  # shellcheck disable=SC2086
  echo "nginx $(run "http://127.0.0.1:$NGINX_PORT/hello" $nginx_workers)" >>"$results"
  echo "gateway $(run "http://127.0.0.1:$GATEWAY_PORT/bench/hello" "$gateway_pid")" >>"$results"
  echo "bare $(run "http://127.0.0.1:$BARE_PORT/bench/hello" "$bare_pid")" >>"$results"
  echo "paced-direct $(paced "127.0.0.1:$UPSTREAM_PORT" /hello "$upstream_pid")" >>"$results"
  # shellcheck disable=SC2086
  echo "paced-nginx $(paced "127.0.0.1:$NGINX_PORT" /hello $nginx_workers)" >>"$results"
  echo "paced-gateway $(paced "127.0.0.1:$GATEWAY_PORT" /bench/hello "$gateway_pid")" >>"$results"
done

python3 - "$results" "$(date -u +%F)" "$CONNECTIONS" "$DURATION" "$THREADS" "$(nproc)" "$ROUNDS" "$RATE" <<'PY'
import statistics, sys
path, day, conns, duration, threads, cores, rounds, rate = sys.argv[1:]
runs = {}
for line in open(path):
    name, *values = line.split()
    runs.setdefault(name, []).append([float(v) for v in values])
median = {name: [statistics.median(col) for col in zip(*rows)] for name, rows in runs.items()}
print(f"\n{day}, {conns} connections, {duration} s per run, median of {rounds} interleaved rounds, "
      f"wrk with {threads} threads on the same {cores} cores")
print(f"{'target':<36} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU us/req':>11}")
labels = {"direct": "(a) upstream directly", "nginx": "(b) nginx, 2 workers", "gateway": "(c) rewards gateway",
          "bare": "(d) reference: bare hyper forwarding"}
for name in ("direct", "nginx", "gateway", "bare"):
    rps, p50, p99, errors, cpu = median[name]
    print(f"{labels[name]:<36} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {errors:>8.0f} {cpu:>11.1f}")
g, n, b = median["gateway"], median["nginx"], median["bare"]
print(f"gateway / nginx: throughput {g[0] / n[0]:.2f}x, p99 {g[2] / n[2]:.2f}x, CPU per request {g[4] / n[4]:.2f}x"
      f"   (target: >= 1.00x throughput, p99 < 1 ms)")
print(f"bare forwarding / nginx: throughput {b[0] / n[0]:.2f}x; the gateway's duties cost {g[4] - b[4]:.1f} us of CPU per request")
print("each round, req/s: " + "; ".join(f"{name} " + " ".join(f"{r[0]:.0f}" for r in runs[name]) for name in labels))
print(f"\npaced at {rate} req/s in all over {conns} connections (paced_load), median of {rounds} rounds")
print(f"{'target':<36} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>8} {'CPU us/req':>11}")
paced = {"paced-direct": "(a) upstream directly", "paced-nginx": "(b) nginx, 2 workers", "paced-gateway": "(c) rewards gateway"}
for name, label in paced.items():
    rps, p50, p99, errors, cpu = median[name]
    print(f"{label:<36} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {errors:>8.0f} {cpu:>11.1f}")
g, n = median["paced-gateway"], median["paced-nginx"]
print(f"gateway / nginx, paced: p50 {g[1] / n[1]:.2f}x, p99 {g[2] / n[2]:.2f}x, CPU per request {g[4] / n[4]:.2f}x"
      f"   (target: p99 < 1 ms)")
print("each round, p99 ms: " + "; ".join(f"{name[6:]} " + " ".join(f"{r[2]:.3f}" for r in runs[name]) for name in paced))
PY
