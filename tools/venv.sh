#!/usr/bin/env bash
# Ensure the project's Python virtualenv exists and print its path.
# It lives outside the repo, keyed by the hash of requirements.txt and the Python version, so a
# machine builds it once per pin set. Python: $GPU_FI_PYTHON, else python3 (3.11 or newer).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${GPU_FI_PYTHON:-python3}
cache=${GPU_FI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-resilience-fi}
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "tools/venv.sh: Python >= 3.11 is required (found $pyver at $(command -v "$py")); set GPU_FI_PYTHON" >&2; exit 1; }
key=$(sha256sum <"$root/requirements.txt" | cut -c1-12)
venv="$cache/venv/py$pyver-$key"
mkdir -p "$cache/venv"
# Parallel callers (test stages, scripts) wait here instead of rebuilding each other's venv.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "[venv] creating $venv" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv"
