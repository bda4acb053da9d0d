#!/usr/bin/env bash
# Evaluation on a slurm cluster:
#   GPUS=8 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]
# GPUS (total, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default
# 5) and SRUN_ARGS (extra srun options) configure the allocation.
# Runs .venv/bin/python if the repository has one, else python from PATH.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]" >&2
  exit 2
fi
partition=$1
job_name=$2
config=$3
checkpoint=$4
shift 4
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
  "$python" -u "$root/tools/test.py" "$config" "$checkpoint" \
  --launcher slurm "$@"
