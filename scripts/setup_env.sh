#!/usr/bin/env bash
# Install this checkout (editable) with its pinned dependencies into the current Python
# environment: $PYTHON, default python3. Activate a virtual environment first if you want
# one. Re-running is cheap: nothing is installed again unless pyproject.toml or
# constraints.txt changed, or the environment does not import this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
here=$(pwd -P)
key=$( { "$python" -c 'import sys; print(sys.prefix)'; cat pyproject.toml constraints.txt; } | sha1sum | cut -c1-12)
stamp=".cache/setup/$key"
installed_here() {
  "$python" - "$here" <<'PY' 2>/dev/null
import sys, pathlib, opensora_core, opensora_train
root = pathlib.Path(sys.argv[1])
sys.exit(0 if all(root in pathlib.Path(m.__file__).resolve().parents for m in (opensora_core, opensora_train)) else 1)
PY
}
if [ ! -f "$stamp" ] || ! installed_here; then
  mkdir -p .cache/setup
  log=.cache/setup/install.log
  echo "[setup] installing into $("$python" -c 'import sys; print(sys.prefix)') (first run: a few minutes; log: $log)" >&2
  {
    "$python" -m pip install --upgrade pip &&
    "$python" -m pip install torch==2.13.0 &&
    "$python" -m pip install -c constraints.txt -e ".[train,test,data]"
  } > "$log" 2>&1 || { tail -n 30 "$log" >&2; echo "[setup] install failed, see $log" >&2; exit 1; }
  rm -f .cache/setup/[0-9a-f]* && touch "$stamp"
fi
