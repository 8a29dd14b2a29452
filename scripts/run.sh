#!/usr/bin/env bash
# Install kilowatch into .venv from the lock (constraints.txt; again only when it changes) and run it:
# `bash scripts/run.sh [COMMAND ...]`. With no arguments it runs `kilowatch serve` (its broker + a
# SQLite store). For `serve` it first installs mosquitto from Debian's packages when it can (root and
# apt-get), so that serve runs its managed mosquitto; when it cannot, serve runs its embedded broker
# and says so. `demo` and `simulate` also install the simulator (the sim extra).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [ $# -eq 0 ]; then set -- serve; fi

ensure_mosquitto() {  # best effort: never stops the run
  if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then return 0; fi
  if ( ensure_debian_packages mosquitto:mosquitto ) 2>/dev/null; then
    # Debian's package starts a system mosquitto on port 1883; kilowatch runs its own there.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet mosquitto 2>/dev/null; then
      systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
  else
    echo "mosquitto is not installed (sudo apt-get install mosquitto); kilowatch serve runs its embedded broker instead" >&2
  fi
}

case "$1" in
  demo | simulate) ensure_venv "[sim]" ;;
  serve) ensure_venv ""; ensure_mosquitto ;;
  *) ensure_venv "" ;;
esac
exec "$VENV/bin/kilowatch" "$@"
