#!/usr/bin/env bash
# Install everything the tests need (mosquitto, redis-server, chromium, the Python test extras) and run
# lint, type checks and the whole test suite: `bash scripts/test.sh [PYTEST ARGS ...]`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_debian_packages mosquitto:mosquitto redis-server:redis-server redis-cli:redis-tools chromium:chromium
ensure_venv "[test]"
cd "$ROOT"
echo "== ruff"; "$VENV/bin/ruff" check src tests bench
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; exec "$VENV/bin/python" -m pytest -n "${KILOWATCH_TEST_WORKERS:-2}" "$@"
