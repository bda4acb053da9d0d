#!/usr/bin/env bash
# Training on a slurm cluster:
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options]
# GPUS (total, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default
# 5) and SRUN_ARGS (extra srun options) configure the allocation.
# Runs .venv/bin/python if the repository has one, else python from PATH.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options]" >&2
  exit 2
fi
partition=$1
job_name=$2
config=$3
shift 3
work_dir_args=()
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  work_dir_args=(--work-dir "$1")
  shift
fi
gpus=${GPUS:-8}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=python
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
PYTHONPATH="$root:${PYTHONPATH:-}" srun -p "$partition" \
  --job-name="$job_name" \
  --gres=gpu:"${GPUS_PER_NODE:-8}" \
  --ntasks="$gpus" \
  --ntasks-per-node="${GPUS_PER_NODE:-8}" \
  --cpus-per-task="${CPUS_PER_TASK:-5}" \
  --kill-on-bad-exit=1 \
  ${SRUN_ARGS:-} \
  "$python" -u "$root/tools/train.py" "$config" "${work_dir_args[@]}" \
  --launcher slurm "$@"
