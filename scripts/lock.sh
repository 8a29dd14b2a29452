#!/usr/bin/env bash
# Regenerate constraints.txt, the lock that scripts/run.sh, scripts/test.sh and CI install from, out
# of pyproject.toml's ranges (base dependencies and the sim, test and bench extras, for Python 3.11+
# on any platform). Versions already in the lock are kept while pyproject.toml allows them:
#   bash scripts/lock.sh                          # after editing pyproject.toml's dependencies
#   bash scripts/lock.sh --upgrade                # every package to its newest release
#   bash scripts/lock.sh --upgrade-package redis  # one package
# It runs uv (pinned below) from its own .venv-tools; installing from the lock needs only pip.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
UV_VERSION="0.13.10"
TOOLS="$ROOT/.venv-tools"
if ! "$TOOLS/bin/uv" --version 2>/dev/null | grep -qx "uv $UV_VERSION\( .*\)\?"; then
  "$(need_python)" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
cd "$ROOT"
exec "$TOOLS/bin/uv" pip compile pyproject.toml --extra sim --extra test --extra bench \
  --universal --python-version 3.11 --custom-compile-command "bash scripts/lock.sh" \
  --quiet -o constraints.txt "$@"
