#!/usr/bin/env bash
# Install kilowatch into .venv from the lock (constraints.txt; again only when it changes) and run it:
# `bash scripts/run.sh [COMMAND ...]`. With no arguments it runs `kilowatch serve` on its embedded
# defaults (broker + SQLite store). `demo` and `simulate` also install the simulator (the sim extra).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [ $# -eq 0 ]; then set -- serve; fi
case "$1" in
  demo | simulate) ensure_venv "[sim]" ;;
  *) ensure_venv "" ;;
esac
exec "$VENV/bin/kilowatch" "$@"
