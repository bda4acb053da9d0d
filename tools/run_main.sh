#!/usr/bin/env bash
# Sets up .venv (tools/setup_env.sh), then runs the main job on the bundled
# toy data: writes data/toy_coco and data/toy_ade20k (tools/make_toy_data.py),
# evaluates Mask R-CNN (ACmix-Swin), UperNet and a Hamburger head (both
# ACmix-ResNet) untrained, trains them on the CPU, draws their loss and
# validation curves, evaluates them again and draws prediction pictures
# (tools/toy_demo.py). Extra arguments go to tools/toy_demo.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup_env.sh"
cd "$root"
.venv/bin/python tools/make_toy_data.py
exec .venv/bin/python tools/toy_demo.py "$@"
