#!/usr/bin/env bash
# The proxy-overhead comparison with wrk, the load generator behind the reference figures in the
# README: the mock upstream directly, then through visa-proxy (and optionally a peer gateway), in
# one run, on loopback, with the proxy's CPU use and memory per point.
#   scripts/bench-wrk.sh [SECONDS] [CONNECTIONS...]     (defaults: 5, 1 16 64 256; needs wrk)
# env: TIERS   mock tiers, default "0 10": the mock's time to first token in ms (0: answers at
#              once; 10: what a fast real upstream adds, so the overhead is seen as a user sees it)
#      MODES   default "json stream"
#      PEER_URL, PEER_KEY, PEER_PID   another OpenAI-compatible gateway started by hand with this
#              run's mock as its upstream (its base URL up to /v1, a key it accepts, and its pid
#              for CPU and memory); the script prints the mock's URL and waits PEER_WAIT seconds
#              (default 0) so it can be pointed there. PEER_MODEL: the model name it routes.
#      BEFORE_BIN  another visa-proxy binary (an earlier build) measured beside this one, with
#              the same config, as target "before"
#      PERF_OUT    write a flamegraph (SVG) of the proxy's CPU time during its runs there
#              (perf record with DWARF call graphs; needs perf and inferno: cargo install inferno;
#              best with one point, e.g. MODES=json TIERS=0 scripts/bench-wrk.sh 10 16)
#      PROFILE     a profile (JSON) saved for the bench tenant before measuring, e.g.
#              '{"values":{"power":{"target":0.1}},"action":"audit","audit_sample":0.1}'
#              (without it the tenant has none and takes the fast path)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"; shift || true
conns=("${@:-1 16 64 256}"); conns=(${conns[@]})
tiers=(${TIERS:-0 10})
modes=(${MODES:-json stream})
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/visa-proxy-target}"
cargo build --release --quiet --bin visa-proxy --example mock_upstream
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

MOCK_ADDR="${MOCK_ADDR:-127.0.0.1:0}"
"$bin/examples/mock_upstream" "$MOCK_ADDR" >"$work/mock.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/mock.out" && break; sleep 0.1; done
mock_url="$(sed -n 's/^mock upstream listening on //p' "$work/mock.out")"
hash="$("$bin/visa-proxy" hash-key sk-bench)"
cat >"$work/config.toml" <<TOML
[server]
max_concurrent_requests = 100000
[llm]
enabled = false
[profiles]
database = "$work/profiles.sqlite"
[[upstreams]]
name = "mock"
base_url = "$mock_url"
[[tenants]]
id = "bench"
api_key_sha256 = ["$hash"]
upstreams = ["mock"]
TOML
export VISA_ADMIN_KEY="${VISA_ADMIN_KEY:-bench-admin}"
"$bin/visa-proxy" serve --config "$work/config.toml" --listen 127.0.0.1:0 >"$work/proxy.out" 2>/dev/null &
proxy_pid=$!
pids+=($proxy_pid)
for _ in $(seq 100); do grep -q listening "$work/proxy.out" && break; sleep 0.1; done
proxy_url="$(sed -n 's/^visa-proxy listening on //p' "$work/proxy.out")"
before_pid=""
if [ -n "${BEFORE_BIN:-}" ]; then
  "$BEFORE_BIN" serve --config "$work/config.toml" --listen 127.0.0.1:0 >"$work/before.out" 2>/dev/null &
  before_pid=$!
  pids+=($before_pid)
  for _ in $(seq 100); do grep -q listening "$work/before.out" && break; sleep 0.1; done
  before_url="$(sed -n 's/^visa-proxy listening on //p' "$work/before.out")"
fi
echo "mock upstream: $mock_url"
if [ -n "${PROFILE:-}" ]; then
  for url in "$proxy_url" ${before_url:+"$before_url"}; do
    curl -fsS -X PUT -H "Authorization: Bearer $VISA_ADMIN_KEY" -H 'Content-Type: application/json' \
      -d "$PROFILE" "$url/v1/tenants/bench/profile" >/dev/null
  done
  echo "profile: $PROFILE"
fi
if [ -n "${PEER_URL:-}" ]; then sleep "${PEER_WAIT:-0}"; fi

# CPU seconds (user + system) a process has used so far, and its resident and peak memory.
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
echo "visa-proxy idle: RSS $(rss_mb "$proxy_pid") MB"
# CPU time the hypervisor gave to others (steal) over the run: figures from a run with much of
# it are not comparable with another run's.
steal_ticks() { awk '/^cpu / {print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
steal_start="$(steal_ticks)"

printf '%-6s %-6s %-5s %-6s %10s %10s %10s %7s %9s %9s  %s\n' \
  mode ttft conc target "req/s" "p50" "p99" "cpu%" "rss MB" "peak MB" note
for mode in "${modes[@]}"; do
  stream=false; [ "$mode" = stream ] && stream=true
  for tier in "${tiers[@]}"; do
    mock_field=""; [ "$tier" != 0 ] && mock_field=",\"mock\":{\"ttft_ms\":$tier}"
    for c in "${conns[@]}"; do
      targets=(direct); [ -n "$before_pid" ] && targets+=(before)
      targets+=(proxy); [ -n "${PEER_URL:-}" ] && targets+=(peer)
      for target in "${targets[@]}"; do
        model=bench; key=sk-bench; pid=""
        case "$target" in
          direct) url="$mock_url/chat/completions" ;;
          proxy) url="$proxy_url/v1/chat/completions"; pid=$proxy_pid ;;
          before) url="$before_url/v1/chat/completions"; pid=$before_pid ;;
          peer) url="${PEER_URL%/}/chat/completions"; key="${PEER_KEY:-}"; model="${PEER_MODEL:-bench}"; pid="${PEER_PID:-}" ;;
        esac
        cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body   = '{"model":"$model","stream":$stream,"messages":[{"role":"user","content":"hello benchmark"}]$mock_field}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
        before=""; [ -n "$pid" ] && before="$(cpu_s "$pid")"
        perf_pid=""
        if [ -n "${PERF_OUT:-}" ] && [ "$target" = proxy ]; then
          perf record -q -F 199 --call-graph dwarf,16384 -p "$pid" \
            -o "$work/perf.$mode.$tier.$c.data" >/dev/null 2>&1 &
          perf_pid=$!
        fi
        started=$(date +%s.%N)
        out="$(wrk -t1 -c"$c" -d"${secs}s" --latency -s "$work/post.lua" "$url")"
        ended=$(date +%s.%N)
        if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
        cpu="-"; rss="-"; hwm="-"
        if [ -n "$pid" ]; then
          cpu="$(awk -v a="$before" -v b="$(cpu_s "$pid")" -v s="$started" -v e="$ended" 'BEGIN {printf "%.0f", 100 * (b - a) / (e - s)}')"
          rss="$(rss_mb "$pid")"; hwm="$(hwm_mb "$pid")"
        fi
        rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
        p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
        p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
        bad="$(awk '/Non-2xx/ {print "non-2xx: " $5}' <<<"$out")"
        printf '%-6s %-6s %-5s %-6s %10s %10s %10s %7s %9s %9s  %s\n' \
          "$mode" "${tier}ms" "$c" "$target" "$rps" "$p50" "$p99" "$cpu" "$rss" "$hwm" "$bad"
      done
    done
  done
done
awk -v a="$steal_start" -v b="$(steal_ticks)" 'BEGIN {split(a, x, " "); split(b, y, " ");
  if (y[2] > x[2]) printf "CPU stolen by the hypervisor during the run: %.0f%%\n", 100 * (y[1] - x[1]) / (y[2] - x[2])}'
if [ -n "${PROFILE:-}" ]; then
  # What the profile's enforcement did during the run (sampled audits: measured or dropped).
  curl -fsS -H "Authorization: Bearer $VISA_ADMIN_KEY" "$proxy_url/metrics" \
    | grep -E '^visa_(audit_samples_total|enforce_actions_total)' || true
fi
if [ -n "${PERF_OUT:-}" ]; then
  for data in "$work"/perf.*.data; do perf script -i "$data" 2>/dev/null; done \
    | inferno-collapse-perf | inferno-flamegraph --minwidth 3 --title "visa-proxy under wrk (${modes[*]}, c=${conns[*]})" >"$PERF_OUT"
  echo "flamegraph: $PERF_OUT"
fi
