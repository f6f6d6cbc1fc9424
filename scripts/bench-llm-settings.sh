#!/usr/bin/env bash
# Local model tokens/s under the engine settings compared in the README ("Local model"):
# mistral.rs' defaults (Q4_1 file, dtype auto = F16 on CPU), Q4_1 with F32, and the default
# (Q8_0 copy, F32). One stream, the benchmark's 123-token prompt, 128 new tokens, greedy;
# median of 3 after a warm-up. Needs a release build and scripts/fetch-models.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-/var/tmp/visa-proxy-target}/release/visa-proxy"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port=18231
for setting in "auto false" "f32 false" "f32 true"; do
  set -- $setting
  cat >"$work/c.toml" <<TOML
[models]
enabled = false
[llm]
dtype = "$1"
requantize_q4_1 = $2
[[upstreams]]
name = "local"
kind = "local"
[[tenants]]
id = "bench"
api_key_sha256 = ["$("$bin" hash-key sk-bench)"]
upstreams = ["local"]
TOML
  VISA_PROFILES_DB="$work/p.sqlite" "$bin" serve --config "$work/c.toml" --listen 127.0.0.1:$port >"$work/out" 2>/dev/null &
  pid=$!
  for _ in $(seq 120); do grep -q listening "$work/out" && break; sleep 0.5; done
  .venv/bin/python - "$port" "dtype=$1 requantize_q4_1=$2" <<'PY'
import json, sys, time, urllib.request
port, label = sys.argv[1], sys.argv[2]
prompt = ("You are a helpful assistant. Read the following note and answer the question after it. "
  "Note: The city council met on Tuesday to discuss the new bicycle lanes along the river. Residents "
  "asked for better lighting, more benches and a safe crossing near the school. The council agreed to "
  "publish a plan by the end of the month and to hold a second meeting in spring. Question: What did "
  "the residents ask for, and what happens next? Answer in a few sentences.")
def run():
    body = {"model": "x", "temperature": 0, "max_tokens": 128, "stream": True,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": prompt}]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"authorization": "Bearer sk-bench", "content-type": "application/json"})
    t = time.time(); ttft = None; usage = None
    for line in urllib.request.urlopen(req):
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        c = json.loads(line[6:])
        if ttft is None and any((ch.get("delta") or {}).get("content") for ch in c["choices"]):
            ttft = time.time() - t
        if c.get("usage"):
            usage = c["usage"]
    total = time.time() - t
    return usage["prompt_tokens"] / ttft, (usage["completion_tokens"] - 1) / (total - ttft)
run()
r = [run() for _ in range(3)]
print(f"{label:35s} prompt {sorted(x[0] for x in r)[1]:6.1f} tokens/s  generation {sorted(x[1] for x in r)[1]:6.1f} tokens/s")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
  port=$((port + 1))
done
