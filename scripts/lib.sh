# Shared by scripts/run.sh and scripts/test.sh: a virtual environment in .venv with kilowatch installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KILOWATCH_VENV:-$ROOT/.venv}"

need_python() {
  local py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "kilowatch needs Python 3.11 or newer; set PYTHON=/path/to/python3.11 or install it" >&2
    exit 2
  fi
  echo "$py"
}

ensure_venv() {  # $1: pip extras, e.g. "[test]" or ""
  local extras="${1:-}" py stamp
  py="$(need_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  stamp="$VENV/.kilowatch-installed$extras"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q -e "$ROOT$extras"
    touch "$stamp"
  fi
}

ensure_debian_packages() {  # $@: "binary:package" pairs
  local missing=() pair bin pkg
  for pair in "$@"; do
    bin="${pair%%:*}"; pkg="${pair##*:}"
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/usr/bin/$bin" ]; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} from Debian's packages..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 2
  fi
}
