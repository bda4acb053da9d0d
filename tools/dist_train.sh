#!/usr/bin/env bash
# Distributed training with torchrun on one machine:
#   bash tools/dist_train.sh CONFIG NUM_PROCESSES [train.py options]
# Runs .venv/bin/python if the repository has one, else python from PATH.
# One process per GPU; without CUDA the processes share the CPU (gloo).
# NNODES, NODE_RANK, MASTER_ADDR and PORT configure multi-node runs.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCESSES [train.py options]" >&2
  exit 2
fi
config=$1
nproc=$2
shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=python
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
PYTHONPATH="$root:${PYTHONPATH:-}" exec "$python" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$nproc" \
  "$root/tools/train.py" "$config" --launcher pytorch "$@"
