#!/usr/bin/env bash
# Install everything the tests need (mosquitto, redis-server, chromium, the Python test extras at the
# versions in the lock, constraints.txt) and run lint, type checks and the whole test suite:
# `bash scripts/test.sh [PYTEST ARGS ...]`.
# `bash scripts/test.sh --latest [PYTEST ARGS ...]` does the same against the newest releases that
# pyproject.toml allows, in a separate .venv-latest (the locked .venv stays as it is).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
deps=locked
if [ "${1:-}" = "--latest" ]; then
  shift
  deps=latest
  VENV="${KILOWATCH_LATEST_VENV:-$ROOT/.venv-latest}"
fi
ensure_debian_packages mosquitto:mosquitto redis-server:redis-server redis-cli:redis-tools chromium:chromium
ensure_venv "[test,bench]" "$deps"
if [ "$deps" = latest ]; then
  echo "== newest releases that differ from the lock (constraints.txt)"
  newer_than_lock
fi
cd "$ROOT"
echo "== ruff"; "$VENV/bin/ruff" check src tests bench
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; exec "$VENV/bin/python" -m pytest -n "${KILOWATCH_TEST_WORKERS:-2}" "$@"
