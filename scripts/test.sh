#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (scripts/setup_env.sh), then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/model -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
