#!/usr/bin/env bash
# Sets up .venv (tools/setup_env.sh), then runs the main job: every config in
# configs/ is built as a full model and run for one training step and one
# prediction on synthetic images; prints parameter counts and timings.
# Extra arguments go to tools/analysis_tools/check_configs.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup_env.sh"
cd "$root"
exec .venv/bin/python tools/analysis_tools/check_configs.py "$@"
