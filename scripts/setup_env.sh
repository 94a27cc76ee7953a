#!/usr/bin/env bash
# Create .venv (once) and install the package with its pinned dependencies.
# Re-running is cheap: nothing is installed again unless pyproject/constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing into .venv (first run: a few minutes; log in .venv/install.log)" >&2
  {
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install torch==2.13.0 &&
    .venv/bin/python -m pip install -c constraints.txt -e ".[train,test]"
  } > .venv/install.log 2>&1 || { tail -n 30 .venv/install.log >&2; echo "[setup] install failed, see .venv/install.log" >&2; exit 1; }
  rm -f .venv/.installed-* && touch "$stamp"
fi
