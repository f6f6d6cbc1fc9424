#!/usr/bin/env bash
# Runs visa-proxy on a fresh machine with its shipped config: fetches and verifies the model
# files, builds, and starts the proxy on 127.0.0.1:8080. The demo tenant (key sk-visa-demo)
# is answered by the local model (SmolLM2-135M through mistral.rs); no API key is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/visa-proxy-target}"
bash scripts/ensure-toolchain.sh
bash scripts/fetch-models.sh
cargo build --release --bin visa-proxy
exec "$CARGO_TARGET_DIR/release/visa-proxy" serve "$@"
