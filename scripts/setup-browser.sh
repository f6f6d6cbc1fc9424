#!/usr/bin/env bash
# Installs what the web console's browser tests need: Debian's Chromium (when /usr/bin/chromium
# is missing; needs root, as on CI machines) and playwright-core from the npm registry into
# tests/browser/node_modules (versions pinned by its package-lock.json). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium > /dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null
  else
    echo "chromium is not installed: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
echo "browser test environment ready: $(chromium --version 2>/dev/null || echo chromium), playwright-core in tests/browser/node_modules"
