#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv in the repository root with
# torch, mmcv (full, compiled ops), mmdet, mmsegmentation and acmix_mm in
# editable mode. Safe to run again: finished steps are skipped.
#
# Environment variables:
#   PYTHON       interpreter used to create .venv (default: python3)
#   TORCH_SPEC   torch requirement (default: torch==2.13.0, the CPU wheel);
#                set it to your CUDA build, e.g. "torch==2.5.1", on a GPU box
#   MMCV_SPEC    mmcv requirement (default: mmcv==2.1.0, built from source)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
mmcv_spec="${MMCV_SPEC:-mmcv==2.1.0}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

has() { "$py" -c "$1" >/dev/null 2>&1; }

if ! has "import setuptools, pkg_resources, wheel"; then
  echo "[setup] installing build tools"
  "${pip[@]}" install -q "setuptools>=77,<82" wheel ninja
fi

if ! has "import torch"; then
  echo "[setup] installing $torch_spec"
  "${pip[@]}" install -q "$torch_spec"
fi

if ! has "import mmcv.ops"; then
  echo "[setup] installing $mmcv_spec with compiled ops (first time: ~10 min, then cached by pip)"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${pip[@]}" install -q --no-build-isolation "$mmcv_spec"
fi

stamp="$venv/.acmix_mm-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] \
    || ! has "import acmix_mm, mmdet, mmseg, pytest, triton"; then
  echo "[setup] installing acmix_mm (editable) with test extras"
  "${pip[@]}" install -q --no-build-isolation -e "$root[test]"
  touch "$stamp"
fi
echo "[setup] environment ready: $venv"
