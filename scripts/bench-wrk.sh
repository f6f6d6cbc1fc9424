#!/usr/bin/env bash
# The proxy-overhead comparison with wrk, the load generator behind the reference figures in the
# README: the mock upstream directly, then through visa-proxy, in one run, on loopback.
#   scripts/bench-wrk.sh [SECONDS] [CONNECTIONS...]     (defaults: 5, 1 16 64; needs wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"; shift || true
conns=("${@:-1 16 64}"); conns=(${conns[@]})
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/visa-proxy-target}"
cargo build --release --quiet --bin visa-proxy --example mock_upstream
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/examples/mock_upstream" 127.0.0.1:0 >"$work/mock.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/mock.out" && break; sleep 0.1; done
mock_url="$(sed -n 's/^mock upstream listening on //p' "$work/mock.out")"
hash="$("$bin/visa-proxy" hash-key sk-bench)"
cat >"$work/config.toml" <<TOML
[server]
max_concurrent_requests = 100000
[llm]
enabled = false
[[upstreams]]
name = "mock"
base_url = "$mock_url"
[[tenants]]
id = "bench"
api_key_sha256 = ["$hash"]
upstreams = ["mock"]
TOML
"$bin/visa-proxy" serve --config "$work/config.toml" --listen 127.0.0.1:0 >"$work/proxy.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/proxy.out" && break; sleep 0.1; done
proxy_url="$(sed -n 's/^visa-proxy listening on //p' "$work/proxy.out")"

for mode in json stream; do
  stream=false; [ "$mode" = stream ] && stream=true
  cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body   = '{"model":"bench","stream":$stream,"messages":[{"role":"user","content":"hello benchmark"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
LUA
  for c in "${conns[@]}"; do
    for target in direct proxy; do
      if [ "$target" = direct ]; then url="$mock_url/chat/completions"; else url="$proxy_url/v1/chat/completions"; fi
      out="$(wrk -t1 -c"$c" -d"${secs}s" --latency -s "$work/post.lua" "$url")"
      rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
      p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
      p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
      bad="$(awk '/Non-2xx/ {print $5}' <<<"$out")"
      printf '%-6s c=%-3s %-6s %10s req/s  p50 %-9s p99 %-9s %s\n' "$mode" "$c" "$target" "$rps" "$p50" "$p99" "${bad:+non-2xx: $bad}"
    done
  done
done
