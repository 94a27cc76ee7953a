#!/usr/bin/env bash
# Run the whole test suite (installs the package into the current Python first if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
