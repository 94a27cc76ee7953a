#!/usr/bin/env bash
# Run the whole test suite (installs the environment first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
