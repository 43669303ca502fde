# Sourced by tools/demo and tools/test: make ./.venv with the project installed in it.
# Usage: ensure_venv EXTRAS   (EXTRAS is "" or "[test]")
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${JANUS_VENV:-$REPO/.venv}"

pick_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "janus: Python 3.11 or newer is required (none found on PATH)" >&2
  return 1
}

ensure_venv() {
  local extras="${1:-}"
  local python
  python="$(pick_python)"
  if [ -e "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    echo "janus: $VENV exists but its python does not run here (made by another user or" \
         "another Python?); remove it (rm -rf $VENV) or set JANUS_VENV to another directory" >&2
    return 1
  fi
  if [ ! -e "$VENV" ]; then
    local err
    if ! err="$("$python" -m venv "$VENV" 2>&1)"; then
      rm -rf "$VENV"  # only the half-made directory this call created
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 &&
         printf '%s' "$err" | grep -qi "ensurepip\|python3-venv"; then
        echo "janus: installing python3-venv (Debian/Ubuntu ship venv separately)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$VENV"
      else
        printf '%s\n' "$err" >&2
        echo "janus: '$python -m venv $VENV' failed (above); on Debian/Ubuntu install" \
             "python3-venv (sudo apt-get install python3-venv), and check $REPO is writable" >&2
        return 1
      fi
    fi
  fi
  local stamp="$VENV/.janus-installed$extras"
  if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
    echo "janus: installing janus-supervisor$extras into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --quiet -e "$REPO$extras"
    touch "$stamp"
  fi
}
