#!/usr/bin/env bash
# Rebuild the bundled demo model from scratch (procedural data -> VAE -> DiT, our trainer) and
# install it into demo/: about 176 CPU minutes (89 minutes measured end to end on 2 free cores with AVX2 only).
# Intermediate files: outputs/demo_build (an interrupted build continues; pass --fresh to start over).
# See demo/README.md.
# On a machine shared with other work, run it with OMP_NUM_THREADS=1: two OpenMP threads that wait for each
# other's time slice made the VAE stage 20x slower (6.8 s/step against 0.3 s/step at a load of ~12 on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "${PYTHON:-python3}" -m opensora_train.demo --install demo "$@"
