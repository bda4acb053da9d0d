#!/usr/bin/env bash
# Downloads, into one folder, every package that a GPU machine with only
# torch, Triton and CUDA lacks for acmix_mm and its tests, so that
# run_gpu_check.sh can install them there without network access. Run it on a
# machine with network access (any OS; it only downloads).
#
# What it fetches (wheels for the target's Python and platform, with all their
# run-time requirements): mmengine 0.10.x, mmdet 3.3.0, mmsegmentation 1.2.2,
# ftfy and regex (mmseg imports them without declaring them), pytest,
# mmcv 2.1.0's run-time requirements, and what building mmcv needs
# (setuptools>=77,<82 for pkg_resources, ninja, wheel). mmcv 2.1.0 has no
# wheels for recent torch versions, so it comes as its source tarball, which
# run_gpu_check.sh compiles on the GPU machine. torch, triton and nvidia-*
# packages are never downloaded: the GPU machine's own must stay.
#
# After downloading it checks that the set is complete: every Requires-Dist of
# every wheel (extras left out, markers evaluated for the target) and of the
# list above must be met by the folder or by --have; it fails listing what is
# missing. Then it prints the files and their total size.
#
# Usage: tools/gpu_check/download_wheels.sh [options]
#   --python X.Y     the GPU machine's Python version (default 3.12)
#   --platform TAG   a platform tag of the GPU machine, repeatable; replaces
#                    the default, manylinux_x86_64, short for manylinux_2_28
#                    .. manylinux1 x86_64, the tags pip must be given one by
#                    one (manylinux_aarch64 likewise). A wheel that needs a
#                    newer glibc than 2.28 is only taken if you add its tag.
#   --dest DIR       the folder (default: .whl in the repository root, which
#                    git ignores); files already there are reused if they fit,
#                    and removed if nothing needs them or they do not fit
#   --have FILE      `python3 -m pip list --format=freeze` of the GPU machine:
#                    its packages are neither downloaded nor kept in DIR, so
#                    that newer versions there are not shadowed
#   --check-only     only check DIR for completeness (no network)
#   -h, --help       this text
# Environment: PYTHON, the interpreter that runs pip here (default python3).
#
# Example: on the GPU machine `python3 -m pip list --format=freeze > have.txt`,
# copy have.txt here, then
#   tools/gpu_check/download_wheels.sh --have have.txt      # into .whl/
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "download_wheels.sh: error: $*" >&2; exit 2; }

python_version=3.12
platforms=()
dest="$root/.whl"
have=""
check_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die "--python needs a value such as 3.12"
              python_version="$2"; shift 2 ;;
    --platform) [ $# -ge 2 ] || die "--platform needs a tag such as manylinux_x86_64"
                platforms+=("$2"); shift 2 ;;
    --dest) [ $# -ge 2 ] || die "--dest needs a folder"; dest="$2"; shift 2 ;;
    --have) [ $# -ge 2 ] || die "--have needs a file (pip list --format=freeze)"
            have="$2"; shift 2 ;;
    --check-only) check_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$python_version" =~ ^3\.[0-9]+$ ]] \
  || die "--python wants a version such as 3.12, got '$python_version'"
[ -z "$have" ] || [ -f "$have" ] || die "--have file '$have' does not exist"
[ -z "$have" ] || have="$(cd "$(dirname "$have")" && pwd)/$(basename "$have")"
[ ${#platforms[@]} -gt 0 ] || platforms=(manylinux_x86_64)

# Expand the manylinux shorthands: pip matches each manylinux tag exactly.
tags=()
for platform in "${platforms[@]}"; do
  case "$platform" in
    manylinux_x86_64|manylinux_aarch64)
      arch="${platform#manylinux_}"
      for glibc in 28 27 26 25 24 17 12 5; do tags+=("manylinux_2_${glibc}_$arch"); done
      tags+=("manylinux2014_$arch")
      [ "$arch" = aarch64 ] || tags+=("manylinux2010_$arch" "manylinux1_$arch") ;;
    *) tags+=("$platform") ;;
  esac
done

# The requirements the set starts from (acmix_mm's own, from pyproject.toml,
# besides torch and Triton, plus what its tests and the mmcv build need).
roots=(
  "mmcv==2.1.0"                 # the source tarball, built on the GPU machine
  # mmcv 2.1.0's run-time requirements (its tarball's requires.txt, with the
  # headless OpenCV, which mmcv's setup.py picks when one is installed)
  "addict" "mmengine>=0.3.0" "numpy" "packaging" "Pillow" "pyyaml" "yapf"
  "opencv-python-headless>=3"
  "mmengine>=0.10,<0.11" "mmdet==3.3.0" "mmsegmentation==1.2.2"
  "ftfy" "regex"                # mmseg imports them without declaring them
  "pytest"
  "setuptools>=77,<82" "ninja" "wheel"   # building mmcv (pkg_resources)
)

target_args=(--dir "$dest" --python "$python_version")
for tag in "${tags[@]}"; do target_args+=(--platform "$tag"); done
[ -z "$have" ] || target_args+=(--have "$have")
for req in "${roots[@]}"; do target_args+=(--root "$req"); done
helper=("$python" "$here/wheelset.py")

check() {
  echo "== checking $dest for Python $python_version (${tags[0]}${have:+, with $have})"
  if ! "${helper[@]}" check "${target_args[@]}"; then
    echo "download_wheels.sh: error: the set in $dest is incomplete (see above)" >&2
    exit 1
  fi
}

if [ "$check_only" = 1 ]; then
  [ -d "$dest" ] || die "--dest folder '$dest' does not exist"
  check
  exit 0
fi

"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip"
mkdir -p "$dest"
pip_download=("$python" -m pip download --disable-pip-version-check -q -d "$dest")

# mmcv: its source tarball, unless the target has mmcv or the folder holds it.
have_mmcv=0
[ -n "$have" ] && grep -qiE '^mmcv([=@ ]|$)' "$have" && have_mmcv=1
have_mmcv_file=0
for file in "$dest"/mmcv-2.1.0.tar.gz "$dest"/mmcv-2.1.0-*.whl; do
  [ ! -e "$file" ] || have_mmcv_file=1
done
if [ "$have_mmcv" = 0 ] && [ "$have_mmcv_file" = 0 ]; then
  echo "== downloading the mmcv 2.1.0 source tarball"
  # pip reads the tarball's metadata with setup.py, which imports
  # pkg_resources: keep the isolated build environment on setuptools < 82.
  constraint="$(mktemp)"
  trap 'rm -f "$constraint"' EXIT
  echo "setuptools<82" > "$constraint"
  PIP_CONSTRAINT="$constraint" "${pip_download[@]}" --no-deps --no-binary :all: "mmcv==2.1.0" \
    || die "pip could not download the mmcv 2.1.0 source tarball (see above)"
fi

# Download what is missing until nothing is: each round reads the
# Requires-Dist of the wheels fetched so far (pip's own resolver would also
# fetch the packages the target already has, and evaluates markers for this
# machine, not the target).
platform_args=()
for tag in "${tags[@]}"; do platform_args+=(--platform "$tag"); done
settled=0
for round in 1 2 3 4 5 6 7 8 9 10; do
  plan="$("${helper[@]}" resolve "${target_args[@]}")"
  wanted=()
  while IFS= read -r line; do
    case "$line" in
      "DELETE "*)
        file="${line#DELETE }"; file="${file%%$'\t'*}"
        echo "   removing $(basename "$file") (${line#*$'\t'})"
        rm -f -- "$file" ;;
      "DOWNLOAD "*)
        req="${line#DOWNLOAD }"; wanted+=("${req%%$'\t'*}") ;;
    esac
  done <<< "$plan"
  if [ ${#wanted[@]} -eq 0 ]; then
    settled=1
    break
  fi
  echo "== round $round: downloading ${wanted[*]}"
  "${pip_download[@]}" --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" "${platform_args[@]}" "${wanted[@]}" \
    || die "pip found no wheel for one of: ${wanted[*]} (Python $python_version, ${tags[0]}); add a --platform tag or see pip's message above"
done
[ "$settled" = 1 ] || die "the requirements did not settle after 10 rounds of downloads"

check
echo "== files in $dest"
"${helper[@]}" list --dir "$dest"
