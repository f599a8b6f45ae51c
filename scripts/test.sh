#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (scripts/setup_env.sh), then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/model -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The suite runs tiny models, several processes at once (DDS peers, DDP ranks); one intra-op thread per process
# avoids OpenMP oversubscription, which slowed tiny forwards ~50x on a busy 2-core machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest "$@"
