#!/usr/bin/env bash
# Install kilowatch into .venv (first time only) and run it: `bash scripts/run.sh [COMMAND ...]`.
# With no arguments it runs `kilowatch serve` on its embedded defaults (broker + SQLite store).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_venv ""
if [ $# -eq 0 ]; then set -- serve; fi
exec "$VENV/bin/kilowatch" "$@"
