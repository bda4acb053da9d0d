#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv in the repository root
# with torch, mmcv (full, with compiled ops), mmdet, mmsegmentation and
# acmix_mm in editable mode with its test and lint extras. Safe to run again:
# finished steps are skipped.
#
# mmcv 2.1.0 is built from source unless MMCV_FIND_LINKS names prebuilt
# wheels. With a CUDA build of torch its ops are built with CUDA
# (FORCE_CUDA=1, also on a node without a GPU; nvcc is needed) and the set-up
# checks that they were. Built wheels are kept in MMCV_WHEEL_CACHE, one folder
# per mmcv, torch version, CUDA version and TORCH_CUDA_ARCH_LIST, so a later
# set-up with the same torch takes seconds and another torch never reuses
# them.
#
# Environment variables:
#   PYTHON            interpreter that creates .venv (default: python3)
#   TORCH_SPEC        torch requirement (default: torch==2.13.0). From PyPI
#                     on Linux x86_64 this is a CUDA build; a CPU build comes
#                     from TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   TORCH_INDEX_URL   package index for torch only, e.g.
#                     https://download.pytorch.org/whl/cu121
#   MMCV_SPEC         mmcv requirement (default: mmcv==2.1.0)
#   MMCV_FIND_LINKS   page of prebuilt mmcv wheels, e.g.
#                     https://download.openmmlab.com/mmcv/dist/cu121/torch2.1/index.html
#   MMCV_WHEEL_CACHE  folder of built mmcv wheels
#                     (default: ~/.cache/acmix_mm/mmcv-wheels)
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME: passed to the mmcv build
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
mmcv_spec="${MMCV_SPEC:-mmcv==2.1.0}"
wheel_cache="${MMCV_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/acmix_mm/mmcv-wheels}"

die() { echo "[setup] error: $*" >&2; exit 1; }

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

# Whether the installed torch satisfies TORCH_SPEC.
torch_satisfied() {
  "$py" - "$torch_spec" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pip._vendor.packaging.requirements import Requirement
requirement = Requirement(sys.argv[1])
try:
    installed = version(requirement.name)
except PackageNotFoundError:
    sys.exit(1)
sys.exit(not requirement.specifier.contains(installed, prereleases=True))
PY
}

if ! torch_satisfied; then
  echo "[setup] installing $torch_spec${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  "${pip[@]}" install -q "$torch_spec" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

# torch before 2.3 was built against NumPy 1.x: keep every later install there.
if "$py" -W ignore -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 3))'; then
  echo "numpy<2" > "$venv/constraints.txt"
  export PIP_CONSTRAINT="$venv/constraints.txt"
fi

torch_cuda="$("$py" -W ignore -c 'import torch; print(torch.version.cuda or "")')"
torch_version="$("$py" -W ignore -c 'import torch; print(torch.__version__)')"
build_key="${mmcv_spec}-torch${torch_version}-${torch_cuda:+cuda}${torch_cuda:-cpu}${TORCH_CUDA_ARCH_LIST:+-arch${TORCH_CUDA_ARCH_LIST}}"
build_key="$(printf '%s' "$build_key" | tr -c 'A-Za-z0-9._+-' '_')"
stamp="$venv/.mmcv-build"

# mmcv's compiled ops must exist and, with a CUDA torch, include CUDA.
mmcv_ops_ok() {
  local cuda
  cuda="$("$py" -c 'from mmcv.ops import get_compiling_cuda_version as v; print(v())' 2>/dev/null)" || return 1
  [ -z "$torch_cuda" ] || [ "$cuda" != "not available" ]
}

build_mmcv_wheel() {
  local dest="$1" force_cuda=0
  if [ -n "$torch_cuda" ]; then
    force_cuda=1
    "$py" -W ignore -c 'import os, sys; from torch.utils.cpp_extension import CUDA_HOME; sys.exit(not (CUDA_HOME and os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc"))))' \
      || die "torch $torch_version is a CUDA $torch_cuda build, so mmcv's ops must be built with CUDA, but no CUDA toolkit (nvcc) was found. Install CUDA $torch_cuda and set CUDA_HOME, or use prebuilt mmcv wheels (MMCV_FIND_LINKS, torch 2.1 only), or a CPU torch (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)."
  fi
  echo "[setup] building $mmcv_spec for torch $torch_version (ops for ${torch_cuda:+CUDA }${torch_cuda:-the CPU}; the first time takes 10-15 min on 2 cores, more with CUDA)"
  rm -rf "$dest.partial"
  MMCV_WITH_OPS=1 FORCE_CUDA="$force_cuda" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${pip[@]}" wheel -q --no-build-isolation --no-deps --no-cache-dir \
    "$mmcv_spec" -w "$dest.partial"
  mv "$dest.partial" "$dest"
}

if [ "$(cat "$stamp" 2>/dev/null)" != "$build_key" ] || ! mmcv_ops_ok; then
  if [ -n "${MMCV_FIND_LINKS:-}" ]; then
    echo "[setup] installing prebuilt $mmcv_spec from $MMCV_FIND_LINKS"
    "${pip[@]}" install -q --force-reinstall --no-deps --only-binary mmcv \
      -f "$MMCV_FIND_LINKS" "$mmcv_spec"
    "${pip[@]}" install -q -f "$MMCV_FIND_LINKS" "$mmcv_spec"
  else
    wheel_dir="$wheel_cache/$build_key"
    if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
      build_mmcv_wheel "$wheel_dir"
    else
      echo "[setup] reusing $wheel_dir"
    fi
    wheel_file="$(ls "$wheel_dir"/mmcv-*.whl | head -n 1)"
    "${pip[@]}" install -q --force-reinstall --no-deps "$wheel_file"
    "${pip[@]}" install -q "$wheel_file"
  fi
  mmcv_ops_ok || die "mmcv's compiled ops do not load or were built without CUDA although torch $torch_version is a CUDA build; remove $wheel_cache/$build_key and run again (see the README's GPU quick start)"
  echo "$build_key" > "$stamp"
fi

stamp="$venv/.acmix_mm-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] \
    || ! has "import acmix_mm, mmdet, mmseg, pytest, triton, flake8, isort, yapf"; then
  echo "[setup] installing acmix_mm (editable) with test and lint extras"
  "${pip[@]}" install -q --no-build-isolation -e "$root[test,lint]"
  touch "$stamp"
fi
echo "[setup] environment ready: $venv"
