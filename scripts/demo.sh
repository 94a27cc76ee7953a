#!/usr/bin/env bash
# The main job on the bundled demo model (no downloads): image-to-video of
# demo/inputs/opensora_demo_first_frame.png with opensora-generate, on CPU, into outputs/demo.mp4.
# Extra arguments go to opensora-generate (e.g. --prompt "a blue square moves up on a gray background").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec "${PYTHON:-python3}" -m opensora_core.cli.generate --demo "$@"
