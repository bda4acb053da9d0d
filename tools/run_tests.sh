#!/usr/bin/env bash
# Sets up .venv (tools/setup_env.sh), then runs the test-suite on the CPU.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k swin -x`;
# the 20 slowest tests are listed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup_env.sh"
cd "$root"
exec .venv/bin/python -m pytest tests --durations=20 "$@"
