#!/usr/bin/env bash
# Runs every GPU check of acmix_mm on a GPU machine without network access, in
# one command that ends within a time budget (default 9 minutes):
#
#   1. installs the wheels of WHEEL_DIR (made by download_wheels.sh) whose
#      project the current Python lacks (pip --no-index --no-deps; torch,
#      Triton and nvidia-* are never touched; setuptools only if it has no
#      pkg_resources) and puts the repository's acmix_mm first on PYTHONPATH;
#   2. mmcv 2.1.0: keeps compiled ops that are installed already, else
#      installs an mmcv wheel of WHEEL_DIR built for this Python, else builds
#      the source tarball of WHEEL_DIR in the background: CPU-only ops and
#      CUDA ops for this GPU's compute capability only, at the same time;
#   3. runs the checks, each time-boxed with `timeout`, most important first:
#      `python -m acmix_mm.check_install --ops-only` (pinned: with
#      autotuning its first run compiles for minutes); the fused op's tests
#      (tests/test_ops/test_triton_kernels.py) with ACMIX_TUNING_CONFIG=4,2,
#      so that each kernel variant compiles once; `benchmark_acmix.py
#      --sections op` (here if mmcv is still building); the kernels'
#      Nsight Compute counters and compute-sanitizer's memcheck of one
#      layer (profile_layer.py, into benchmark.log); once mmcv.ops imports:
#      the full check_install and tests/test_models/test_fused_layers.py (pinned), then
#      `--sections backbone`; a short unpinned run of the autotuning tests;
#      once mmcv's CUDA ops are installed and run RoIAlign and NMS on the GPU:
#      `--sections mask_rcnn`. A step that would start too close to the end
#      of the budget is SKIPPED; the summary gives each step's status and time.
#
# Why two mmcv builds: mmdet.models, and with it acmix_mm.ACmixResNet, the
# fused-layer tests and the backbone benchmark, only need mmcv.ops to import,
# which the CPU-only build gives in about 2-3 minutes on 16 cores; the CUDA
# build takes several minutes more and may fail against a new torch and CUDA.
# So those checks do not wait for or depend on the CUDA build; only the Mask
# R-CNN benchmark (RoIAlign, NMS on CUDA tensors) does. Both builds start at
# once, so that the CUDA one ends as early as it can; they run under `nice`,
# so the checks keep the CPU they need (the summary notes which benchmarks
# ran beside a build). Without a GPU only the CPU-only build runs, and the
# GPU steps (tests, benchmarks) are SKIPPED unless asked for (--cpu-tests,
# --quick): this checks the script itself on a CPU machine.
#
# Usage: tools/gpu_check/run_gpu_check.sh WHEEL_DIR OUT_DIR [options]
#   --budget SECONDS      wall-clock budget of the whole run (default 540)
#   --quick               pass --quick to the benchmark (tiny shapes; also
#                         runs the benchmark steps on a machine without GPU)
#   --cpu-tests           run the pytest steps also without a GPU (their
#                         CUDA tests skip; Triton runs in its interpreter)
#   --bench-args "ARGS"   more arguments for each benchmark run, e.g.
#                         "--repeats 10 --shapes coco"
#   --pytest-workers N    pytest-xdist workers (default: the cores less 2,
#                         at most 14: the tests mostly compile kernels, which
#                         keeps a core busy each; 0 runs without xdist)
#   --save-mmcv-wheel DIR copy the mmcv wheel built with CUDA ops into DIR;
#                         put it in WHEEL_DIR next time to skip the build
#   -h, --help            this text
# Environment: PYTHON, the interpreter to check (default python3).
#
# OUT_DIR receives at most 8 files and no folders: summary.txt (each step:
# PASS/FAIL/SKIPPED/TIMEOUT, its time and note), install.log (wheels,
# acmix_mm, mmcv install and both check_install runs), mmcv_build.log,
# tests.log, benchmark.log and benchmark_acmix.json/.md/.png. Exit status 0
# when no step failed or timed out, 1 otherwise, 2 for bad arguments.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "run_gpu_check.sh: error: $*" >&2; exit 2; }
now() { date +%s; }

# ---------------------------------------------------------------------------
# Internal mode: the background mmcv builds, started below in their own
# process session (setsid); each is time-boxed to the end of the budget.
#   __build_mmcv SDIST WORK KINDS ARCH JOBS DEADLINE   (KINDS: "cpu cuda" etc.)
# Builds WORK/mmcv-KIND/*.whl for all kinds at once and writes
# WORK/mmcv-KIND.status ("STATUS SECONDS"); the log goes to stdout, each line
# prefixed with its kind.
if [ "${1:-}" = __build_mmcv ]; then
  sdist="$2" work="$3" kinds="$4" arch="$5" jobs="$6" deadline="$7"
  build_one() {  # KIND
    local kind="$1" t0 left rc=0 status build_env
    t0="$(now)"
    left=$(( deadline - t0 ))
    if [ "$kind" = cpu ]; then
      # CUDA hidden: mmcv's setup.py then builds the CPU ops only.
      build_env=(CUDA_VISIBLE_DEVICES= FORCE_CUDA=0)
    else
      build_env=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch")
    fi
    echo "===== mmcv 2.1.0, $kind ops: ${build_env[*]} MAX_JOBS=$jobs, limit ${left}s ($(date '+%F %T'))"
    env "${build_env[@]}" MMCV_WITH_OPS=1 MAX_JOBS="$jobs" \
      timeout -k 10 "$left" "$PYTHON_BIN" -m pip wheel -v --no-index --no-deps --no-cache-dir \
      --no-build-isolation -w "$work/mmcv-$kind" "$sdist" &
    echo $! > "$work/mmcv-$kind.pid"   # the run stops it there if need be
    wait $! || rc=$?
    case "$rc" in
      0) status=PASS ;;
      124|137) status=TIMEOUT ;;
      143) status=STOPPED ;;   # by the run, at its end
      *) status=FAIL ;;
    esac
    echo "===== mmcv $kind ops: $status (exit status $rc) after $(( $(now) - t0 ))s"
    echo "$status $(( $(now) - t0 ))" > "$work/mmcv-$kind.status"
  }
  for kind in $kinds; do
    build_one "$kind" 2>&1 | sed -u "s/^/[$kind] /" &
  done
  wait
  exit 0
fi

# ---------------------------------------------------------------------------
# Arguments.
budget=540
quick=0
cpu_tests=0
bench_args=""
workers=""
save_mmcv=""
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) [ $# -ge 2 ] || die "--budget needs a number of seconds"; budget="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --cpu-tests) cpu_tests=1; shift ;;
    --bench-args) [ $# -ge 2 ] || die "--bench-args needs a string"; bench_args="$2"; shift 2 ;;
    --pytest-workers) [ $# -ge 2 ] || die "--pytest-workers needs a number"; workers="$2"; shift 2 ;;
    --save-mmcv-wheel) [ $# -ge 2 ] || die "--save-mmcv-wheel needs a folder"; save_mmcv="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -eq 2 ] \
  || die "usage: run_gpu_check.sh WHEEL_DIR OUT_DIR [options] (see --help)"
wheel_dir="${positional[0]}"
out_dir="${positional[1]}"
if ! [[ "$budget" =~ ^[0-9]+$ ]] || [ "$budget" -lt 60 ]; then
  die "--budget wants whole seconds, at least 60, got '$budget'"
fi
[ -z "$workers" ] || [[ "$workers" =~ ^[0-9]+$ ]] \
  || die "--pytest-workers wants a number, got '$workers'"
[ -d "$wheel_dir" ] || die "WHEEL_DIR '$wheel_dir' is not a folder; make it on a machine with network access with tools/gpu_check/download_wheels.sh"
wheel_dir="$(cd "$wheel_dir" && pwd)"
command -v "$python" >/dev/null 2>&1 || die "no Python '$python' (set PYTHON)"
"$python" -c 'import torch' 2>/dev/null \
  || die "$python cannot import torch; run this with the Python that holds the GPU build of torch (PYTHON=...)"
[ -z "$save_mmcv" ] || mkdir -p "$save_mmcv" || die "cannot create '$save_mmcv'"
[ -z "$save_mmcv" ] || save_mmcv="$(cd "$save_mmcv" && pwd)"
mkdir -p "$out_dir" || die "cannot create OUT_DIR '$out_dir'"
out_dir="$(cd "$out_dir" && pwd)"

start="$(now)"
deadline=$(( start + budget ))
reserve=15        # seconds kept for the summary
work="$(mktemp -d "${TMPDIR:-/tmp}/acmix_gpu_check.XXXXXX")"
build_pid=""
# Stops the background builds: their timeout processes pass the signal on to
# pip and the compilers; the build driver then ends by itself.
stop_builds() {
  local file
  for file in "$work"/mmcv-*.pid; do
    [ -f "$file" ] && kill -TERM "$(cat "$file")" 2>/dev/null || true
  done
  [ -z "$build_pid" ] || wait "$build_pid" 2>/dev/null || true
}
summary_written=0
cleanup() {
  local rc=$?
  stop_builds
  if [ "$summary_written" = 0 ] && declare -F write_summary >/dev/null; then
    # The script itself broke: still say what ran.
    record "run_gpu_check.sh" FAIL 0 "stopped early with exit status $rc (see the output)"
    write_summary || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

logs=(summary.txt install.log mmcv_build.log tests.log benchmark.log
      benchmark_acmix.json benchmark_acmix.md benchmark_acmix.png)
for name in "${logs[@]}"; do rm -f "$out_dir/$name"; done
others="$(ls -A "$out_dir")"
[ -z "$others" ] || echo "warning: OUT_DIR $out_dir holds other files too: $(echo "$others" | tr '\n' ' ')"
touch "$out_dir/install.log" "$out_dir/tests.log"

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_ROOT_USER_ACTION=ignore
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$root"

# ---------------------------------------------------------------------------
# Steps and the summary.
names=() statuses=() times=() notes=()
environment="(versions not read yet)"
record() {  # NAME STATUS SECONDS NOTE
  names+=("$1"); statuses+=("$2"); times+=("$3"); notes+=("${4:-}")
  printf '[%4ss] %-44s %-8s %5ss  %s\n' "$(( $(now) - start ))" "$1" "$2" "$3" "${4:-}"
}
time_left() { echo $(( deadline - reserve - $(now) )); }

# run_step NAME LOG CAP NOTE -- COMMAND...: runs COMMAND with a limit of
# min(CAP, time left), appending its output to LOG. Sets step_rc.
run_step() {
  local name="$1" log="$2" cap="$3" note="$4" left limit t0 rc status
  shift 5
  left="$(time_left)"
  if [ "$left" -lt 20 ]; then
    record "$name" SKIPPED 0 "no time left in the ${budget}s budget"
    step_rc=125
    return 0
  fi
  limit=$(( cap < left ? cap : left ))
  {
    echo
    echo "===== $name ($(date '+%F %T'), limit ${limit}s)"
    echo "\$ $*"
  } >> "$log"
  t0="$(now)"
  set +e
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  set -e
  echo "===== exit status $rc after $(( $(now) - t0 ))s" >> "$log"
  case "$rc" in
    0) status=PASS ;;
    124|137) status=TIMEOUT; note="${note:+$note; }stopped at its ${limit}s limit" ;;
    *) status=FAIL; note="${note:+$note; }exit status $rc" ;;
  esac
  step_rc=$rc
  record "$name" "$status" "$(( $(now) - t0 ))" "${note:+$note; }log: $(basename "$log")"
}

# pytest's closing line ("3 passed, 2 skipped in 4.1s") in LOG from byte
# OFFSET on, i.e. of the run that started there.
pytest_tally() {
  tail -c +"$(( $2 + 1 ))" "$1" \
    | grep -E '^=+ .*(passed|failed|skipped|error|no tests ran|deselected).* in [0-9.]+s' \
    | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true
}

run_pytest() {  # NAME CAP PINNED(1/0) PYTEST_ARGS...
  local name="$1" cap="$2" pinned="$3" pin offset tally xdist=()
  shift 3
  if [ "$gpu" = 0 ] && [ "$cpu_tests" = 0 ]; then
    record "$name" SKIPPED 0 "no CUDA GPU (the CPU test-suite is tools/run_tests.sh; --cpu-tests runs these here)"
    return 0
  fi
  pin="-u ACMIX_TUNING_CONFIG"
  [ "$pinned" = 0 ] || pin="ACMIX_TUNING_CONFIG=4,2"
  [ "$pytest_workers" -le 1 ] || xdist=(-n "$pytest_workers")
  offset="$(wc -c < "$out_dir/tests.log")"
  # shellcheck disable=SC2086  # $pin is one or two words on purpose
  run_step "$name" "$out_dir/tests.log" "$cap" "" -- \
    env $pin "$python" -m pytest -v -rfE --durations=5 -p no:cacheprovider \
    ${xdist[@]+"${xdist[@]}"} "$@"
  if [ "$step_rc" != 125 ]; then
    tally="$(pytest_tally "$out_dir/tests.log" "$offset")"
    [ "$step_rc" != 5 ] || statuses[-1]=SKIPPED   # pytest selected no test
    notes[-1]="${tally:-no pytest summary}; ${notes[-1]}"
  fi
}

write_summary() {
  local i passed=0 failed=0 skipped=0 overall
  for i in "${!statuses[@]}"; do
    case "${statuses[$i]}" in
      PASS) passed=$((passed + 1)) ;;
      SKIPPED) skipped=$((skipped + 1)) ;;
      *) failed=$((failed + 1)) ;;
    esac
  done
  overall=PASS
  [ "$failed" = 0 ] || overall=FAIL
  {
    echo "acmix_mm GPU check, $(date '+%F %T'), $(hostname)"
    echo "$environment"
    echo "budget ${budget}s; WHEEL_DIR $wheel_dir"
    echo
    printf '%-44s %-8s %6s  %s\n' step status time note
    for i in "${!names[@]}"; do
      printf '%-44s %-8s %5ss  %s\n' "${names[$i]}" "${statuses[$i]}" "${times[$i]}" "${notes[$i]}"
    done
    echo
    echo "overall: $overall ($passed passed, $failed failed or timed out, $skipped skipped) in $(( $(now) - start ))s"
  } > "$out_dir/summary.txt"
  summary_written=1
  echo
  cat "$out_dir/summary.txt"
  [ "$overall" = PASS ]
}

# ---------------------------------------------------------------------------
# The machine.
environment="$("$python" - 2>/dev/null <<'EOF'
import platform, torch
try:
    import triton
    tv = triton.__version__
except Exception as error:
    tv = f'not importable ({type(error).__name__})'
gpu = 'no CUDA GPU'
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability(0)
    gpu = f'{torch.cuda.get_device_name(0)} (sm_{major}{minor})'
print(f'Python {platform.python_version()}, torch {torch.__version__} '
      f'(CUDA {torch.version.cuda}), Triton {tv}, GPU: {gpu}')
EOF
)" || environment="(could not read torch's versions)"
gpu=0
arch=""
if "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  gpu=1
  arch="$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null)"
fi
cores="$(nproc 2>/dev/null || echo 2)"
if [ -z "$workers" ]; then
  workers=$(( cores > 3 ? cores - 2 : 1 ))
  [ "$workers" -le 14 ] || workers=14
fi
pytest_workers="$workers"
if [ "$pytest_workers" -gt 1 ] && ! "$python" -c 'import xdist' 2>/dev/null; then
  pytest_workers=1   # pytest-xdist is not installed
fi
echo "acmix_mm GPU check: $environment"
echo "budget ${budget}s, $cores cores, pytest workers: $pytest_workers, logs in $out_dir"

# ---------------------------------------------------------------------------
# 1. Wheels and acmix_mm.
install_log="$out_dir/install.log"
to_install=()
if ! "$python" "$here/wheelset.py" install --dir "$wheel_dir" > "$work/to-install" 2>> "$install_log"; then
  record "install wheels" FAIL 0 "could not read WHEEL_DIR (log: install.log)"
elif mapfile -t to_install < "$work/to-install" && [ ${#to_install[@]} -gt 0 ]; then
  run_step "install ${#to_install[@]} wheels" "$install_log" 300 "" -- \
    "$python" -m pip install --no-index --no-deps "${to_install[@]}"
else
  record "install wheels" PASS 0 "nothing to install: every project of WHEEL_DIR is here"
fi
{ echo "===== pip check (informational)"; "$python" -m pip check 2>&1 || true; } >> "$install_log"

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if "$python" -c 'import acmix_mm' >> "$install_log" 2>&1; then
  record "acmix_mm from the repository" PASS 0 "PYTHONPATH=$root"
else
  record "acmix_mm from the repository" FAIL 0 "import acmix_mm failed (log: install.log)"
fi

# ---------------------------------------------------------------------------
# 2. mmcv: installed already, a wheel of WHEEL_DIR, or built in the
# background. mmcv_state: none (mmcv.ops does not import), cpu (compiled ops
# without CUDA) or cuda; kept in $mmcv_now, read again after each install.
cat > "$work/mmcv_state.py" <<'EOF2'
try:
    from mmcv.ops import get_compiling_cuda_version
    version = get_compiling_cuda_version()
except Exception:
    print('none')
else:
    print('cpu' if version in ('', 'not available') else 'cuda')
EOF2
# The CUDA ops that Mask R-CNN uses, on CUDA tensors.
cat > "$work/mmcv_cuda_ops.py" <<'EOF2'
import torch
from mmcv.ops import get_compiling_cuda_version, nms, roi_align
x = torch.rand(1, 4, 16, 16, device='cuda')
rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0]], device='cuda')
out = roi_align(x, rois, (2, 2), 1.0, 0, 'avg', True)
boxes = torch.tensor([[0, 0, 4, 4], [1, 1, 5, 5.0]], device='cuda')
kept, _ = nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)
assert out.shape == (1, 4, 2, 2) and kept.shape[0] >= 1
print(f'mmcv CUDA ops work (compiled with CUDA {get_compiling_cuda_version()})')
EOF2
mmcv_state() { "$python" "$work/mmcv_state.py" 2>/dev/null || echo none; }
install_mmcv_wheel() {  # WHEEL STEP_NAME: installs it, records the step
  run_step "$2" "$install_log" 180 "$(basename "$1")" -- \
    "$python" -m pip install --no-index --no-deps --force-reinstall "$1"
  mmcv_now="$(mmcv_state)"
  notes[-1]="ops: $mmcv_now; ${notes[-1]}"
}
# Whether the installed mmcv gives what a step needs: any (mmcv.ops imports)
# or cuda (its ops have CUDA kernels).
mmcv_has() { [ "$mmcv_now" = cuda ] || { [ "$1" = any ] && [ "$mmcv_now" = cpu ]; }; }

mmcv_now="$(mmcv_state)"
mmcv_note=""
build_kinds=""
wheel=""
sdist="$(ls "$wheel_dir"/mmcv-*.tar.gz 2>/dev/null | head -n 1 || true)"
if [ "$mmcv_now" = cuda ] || { [ "$mmcv_now" = cpu ] && [ "$gpu" = 0 ]; }; then
  record "mmcv" PASS 0 "installed already, ops: $mmcv_now"
elif wheel="$("$python" "$here/wheelset.py" mmcv --dir "$wheel_dir")"; then
  install_mmcv_wheel "$wheel" "mmcv wheel from WHEEL_DIR"
  if [ "$mmcv_now" = none ]; then
    statuses[-1]=FAIL
    notes[-1]="mmcv.ops does not import (built for another torch?); ${notes[-1]}"
    build_kinds="cpu"
  fi
elif [ "$mmcv_now" = cpu ]; then
  build_kinds="cuda"     # CPU ops installed already (an earlier run)
else
  build_kinds="cpu"
fi
[ "$gpu" = 0 ] || [ "$build_kinds" != cpu ] || build_kinds="cpu cuda"
if [ -n "$build_kinds" ] && [ -z "$sdist" ]; then
  record "mmcv build" SKIPPED 0 "no mmcv source tarball in WHEEL_DIR"
  mmcv_note="WHEEL_DIR has no mmcv source tarball to build from"
  build_kinds=""
fi
if [ -n "$build_kinds" ]; then
  echo "building mmcv in the background: $build_kinds ops ($(basename "$sdist"), MAX_JOBS=$cores${arch:+, TORCH_CUDA_ARCH_LIST=$arch}; log: mmcv_build.log)"
  build_start="$(now)"
  PYTHON_BIN="$python" setsid nice -n 10 bash "${BASH_SOURCE[0]}" __build_mmcv \
    "$sdist" "$work" "$build_kinds" "$arch" "$cores" "$(( deadline - reserve ))" \
    > "$out_dir/mmcv_build.log" 2>&1 < /dev/null &
  build_pid=$!
fi
build_running() { [ -n "$build_pid" ] && kill -0 "$build_pid" 2>/dev/null; }

# Records the background build's finished passes and installs a built wheel
# (between steps, so that no running step sees a half-installed mmcv).
collected=""
collect_build() {
  local kind status secs rest wheel_file
  for kind in $build_kinds; do
    [ -f "$work/mmcv-$kind.status" ] || continue
    case " $collected " in *" $kind "*) continue ;; esac
    collected="$collected $kind"
    read -r status secs rest < "$work/mmcv-$kind.status"
    record "mmcv build, $kind ops (background)" "$status" "$secs" \
      "${rest:+$rest; }log: mmcv_build.log"
    [ "$status" = PASS ] || continue
    # A CPU build is not installed over working CUDA ops.
    if [ "$kind" = cpu ] && [ "$mmcv_now" = cuda ]; then continue; fi
    wheel_file="$(ls "$work/mmcv-$kind"/mmcv-*.whl | head -n 1)"
    install_mmcv_wheel "$wheel_file" "install mmcv ($kind ops)"
    if [ "$kind" = cuda ] && [ -n "$save_mmcv" ]; then
      cp "$wheel_file" "$save_mmcv/" && notes[-1]="${notes[-1]}; copied to $save_mmcv"
    fi
  done
}

# wait_for_mmcv any|cuda: waits, within the budget, until the installed mmcv
# has what is wanted; returns 1 with mmcv_note set if it will not come.
wait_for_mmcv() {
  local want="$1" t0
  t0="$(now)"
  while true; do
    collect_build
    if mmcv_has "$want"; then
      [ $(( $(now) - t0 )) -lt 5 ] || echo "       (waited $(( $(now) - t0 ))s for mmcv)"
      return 0
    fi
    if ! build_running; then
      collect_build
      mmcv_has "$want" && return 0
      if [ "$want" = any ]; then
        mmcv_note="${mmcv_note:-mmcv.ops does not import (see install.log, mmcv_build.log)}"
      else
        mmcv_note="${mmcv_note:-mmcv has no CUDA ops (see install.log, mmcv_build.log)}"
      fi
      return 1
    fi
    if [ "$(time_left)" -lt 30 ]; then
      mmcv_note="the mmcv build did not finish within the budget"
      return 1
    fi
    sleep 5
  done
}

# ---------------------------------------------------------------------------
# 3. The checks, most important first. What needs only torch and Triton runs
# while mmcv builds; the op benchmark fills the wait for the CPU build if
# there is one, the unpinned autotuning tests the wait for the CUDA build.
bench_cmd=("$python" tools/analysis_tools/benchmark_acmix.py)
[ "$quick" = 0 ] || bench_cmd+=(--quick)
read -r -a extra_bench_args <<< "$bench_args"

# run_bench SECTION CAP: adds the section's rows to OUT_DIR's benchmark
# files (--merge keeps the sections that ran before; the benchmark rewrites
# its files after every row, so a step stopped at its limit keeps its rows).
run_bench() {
  local section="$1" cap="$2" note=""
  if [ "$gpu" = 0 ] && [ "$quick" = 0 ]; then
    record "benchmark --sections $section" SKIPPED 0 "no CUDA GPU (--quick runs it on the CPU)"
    return 0
  fi
  ! build_running || note="ran beside the mmcv build (niced)"
  run_step "benchmark --sections $section" "$out_dir/benchmark.log" "$cap" "$note" -- \
    "${bench_cmd[@]}" --out-dir "$out_dir" --sections "$section" --merge \
    ${extra_bench_args[@]+"${extra_bench_args[@]}"}
}

run_step "check_install --ops-only (pinned 4,2)" "$install_log" 150 "" -- \
  env ACMIX_TUNING_CONFIG=4,2 "$python" -m acmix_mm.check_install --ops-only
run_pytest "tests: fused op (pinned 4,2)" 240 1 tests/test_ops/test_triton_kernels.py

# The op benchmark, then profile_layer.py --counters (ncu) and --memcheck
# (compute-sanitizer) into benchmark.log.
run_op_checks() {
  local mode
  run_bench op 240
  for mode in counters memcheck; do
    if [ "$gpu" = 0 ]; then
      record "profile_layer.py --$mode" SKIPPED 0 "no CUDA GPU"
    else
      run_step "profile_layer.py --$mode" "$out_dir/benchmark.log" 120 "" -- \
        "$python" tools/gpu_check/profile_layer.py "--$mode"
    fi
  done
}

op_bench_done=0
collect_build
if ! mmcv_has any && build_running; then
  run_op_checks
  op_bench_done=1
fi

mmcv_any=0
if wait_for_mmcv any; then
  mmcv_any=1
  run_step "check_install (full, pinned 4,2)" "$install_log" 120 "" -- \
    env ACMIX_TUNING_CONFIG=4,2 "$python" -m acmix_mm.check_install
  run_pytest "tests: fused layers (pinned 4,2)" 240 1 tests/test_models/test_fused_layers.py
else
  for step in "check_install (full, pinned 4,2)" "tests: fused layers (pinned 4,2)"; do
    record "$step" SKIPPED 0 "needs mmcv.ops, but $mmcv_note"
  done
fi
[ "$op_bench_done" = 1 ] || run_op_checks
if [ "$mmcv_any" = 1 ]; then
  run_bench backbone 180
else
  record "benchmark --sections backbone" SKIPPED 0 "needs mmcv.ops, but $mmcv_note"
fi

run_pytest "tests: autotuning (unpinned)" 120 0 tests/test_ops/test_triton_kernels.py \
  -k "every_tuning_config or reuse_compiled_kernels"

# Mask R-CNN: needs mmcv's ops for the benchmark's device.
mask="benchmark --sections mask_rcnn"
if [ "$gpu" = 0 ] && [ "$quick" = 0 ]; then
  record "$mask" SKIPPED 0 "no CUDA GPU (--quick runs it on the CPU)"
elif [ "$gpu" = 0 ]; then
  if mmcv_has any; then
    run_bench mask_rcnn 180
  else
    record "$mask" SKIPPED 0 "needs mmcv.ops, but $mmcv_note"
  fi
elif wait_for_mmcv cuda; then
  run_step "mmcv CUDA ops (RoIAlign, NMS)" "$install_log" 60 "" -- \
    "$python" "$work/mmcv_cuda_ops.py"
  if [ "$step_rc" = 0 ]; then
    run_bench mask_rcnn 180
  else
    record "$mask" SKIPPED 0 "mmcv's CUDA ops do not work"
  fi
else
  record "$mask" SKIPPED 0 "needs mmcv's CUDA ops, but $mmcv_note"
fi

# A build still running now did not finish in time for any step.
collect_build
if build_running; then
  stop_builds
  for kind in $build_kinds; do
    case " $collected " in *" $kind "*) continue ;; esac
    collected="$collected $kind"
    record "mmcv build, $kind ops (background)" TIMEOUT "$(( $(now) - build_start ))" \
      "still running when the checks ended; log: mmcv_build.log"
  done
fi

# OUT_DIR travels back whole: keep the build log under 16 MiB.
if [ -f "$out_dir/mmcv_build.log" ] && [ "$(wc -c < "$out_dir/mmcv_build.log")" -gt 12000000 ]; then
  tail -c 10000000 "$out_dir/mmcv_build.log" > "$work/build.tail"
  { echo "(first part cut: the log was over 12 MB)"; cat "$work/build.tail"; } > "$out_dir/mmcv_build.log"
fi

for name in "${logs[@]}"; do
  [ -s "$out_dir/$name" ] || rm -f "$out_dir/$name"   # no empty logs
done
write_summary
