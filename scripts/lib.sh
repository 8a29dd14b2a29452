# Shared by scripts/run.sh, scripts/test.sh and scripts/lock.sh: a virtual environment in .venv with
# kilowatch installed at the versions pinned in constraints.txt, the lock (made by scripts/lock.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KILOWATCH_VENV:-$ROOT/.venv}"
LOCK="$ROOT/constraints.txt"

need_python() {
  local py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "kilowatch needs Python 3.11 or newer; set PYTHON=/path/to/python3.11 or install it" >&2
    exit 2
  fi
  echo "$py"
}

ensure_venv() {  # $1: pip extras, e.g. "[test,bench]" or ""; $2: "latest" for the newest releases
  local extras="${1:-}" deps="${2:-locked}" py stamp want
  py="$(need_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  if [ "$deps" = latest ]; then
    # every run: the newest releases that pyproject.toml's ranges allow, whatever the lock says
    "$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e "$ROOT$extras"
    return
  fi
  # The stamp holds a digest of pyproject.toml and the lock: a change to either reinstalls.
  stamp="$VENV/.kilowatch-installed$extras"
  want="$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q -c "$LOCK" -e "$ROOT$extras"
    printf '%s\n' "$want" >"$stamp"
  fi
}

newer_than_lock() {  # print each installed package whose version differs from the lock's pin
  "$VENV/bin/python" - "$LOCK" <<'PY'
import re, sys
from importlib.metadata import distributions

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
    if m:
        pins.setdefault(norm(m[1]), set()).add(m[2])
differ = []
for dist in sorted(distributions(), key=lambda d: norm(d.metadata["Name"])):
    name = norm(dist.metadata["Name"])
    if name in pins and dist.version not in pins[name]:
        differ.append(f"  {name} {dist.version} (lock: {', '.join(sorted(pins[name]))})")
print("\n".join(differ) or "  none: the lock has the newest releases")
PY
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
