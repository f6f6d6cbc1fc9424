#!/usr/bin/env bash
# Runs visa-proxy on a fresh machine with its shipped config: fetches and verifies the model
# files, builds, starts the bundled mock upstream (127.0.0.1:9090; the local model upstream is
# not built yet) and then the proxy on 127.0.0.1:8080 (demo tenant key: sk-visa-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/visa-proxy-target}"
bash scripts/fetch-models.sh
cargo build --release --bin visa-proxy --example mock_upstream
"$CARGO_TARGET_DIR/release/examples/mock_upstream" 127.0.0.1:9090 &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
"$CARGO_TARGET_DIR/release/visa-proxy" serve "$@"
