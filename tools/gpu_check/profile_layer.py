"""Profile the fused kernels of one ACmix layer on a GPU: one forward and
backward of the local attention at ACmix-ResNet-50 COCO shapes, each kernel
launched once with the config the autotuner picked on an H100 (no
autotuning).

    python tools/gpu_check/profile_layer.py              # run once
    python tools/gpu_check/profile_layer.py --counters   # under ncu: a table
    python tools/gpu_check/profile_layer.py --memcheck   # compute-sanitizer

``--counters`` prints, per kernel: time, instructions per useful logit
(thread-instructions / (queries x kernel_size^2)), DRAM bytes, registers,
warps active and issue slots busy (% of peak). ``--memcheck`` exits with
compute-sanitizer's status (1 where it reports an error).
"""
import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / 'tools' / 'analysis_tools')]
from benchmark_acmix import COCO_SHAPES, HEADS, KERNEL  # noqa: E402

from acmix_mm.ops import triton_kernels  # noqa: E402

# Benchmark shape: the forward's and the backward's (num_warps, num_stages),
# as the autotuner picked them on an H100.
CONFIGS = {
    'coco/stage1': ((1, 2), (1, 1)),
    'coco/stage4': ((4, 2), (8, 1)),
}
SHAPES = {shape.name: shape for shape in COCO_SHAPES if shape.name in CONFIGS}
# Nsight Compute metric: column of the --counters table.
METRICS = {
    'gpu__time_duration.sum': 'us',
    'smsp__inst_executed.sum': 'instr/logit',
    'dram__bytes_read.sum': 'DRAM read MB',
    'dram__bytes_write.sum': 'DRAM write MB',
    'launch__registers_per_thread': 'registers',
    'sm__warps_active.avg.pct_of_peak_sustained_active': 'warps active %',
    'smsp__issue_active.avg.pct_of_peak_sustained_active': 'issue busy %',
}
# Line the run prints per shape: '<TAG> <shape> <useful logits> <kernels>'.
TAG = 'profile_layer:'


def run_layer(shapes: List[str], dtype: torch.dtype) -> None:
    """Forward and backward at each shape; one TAG line per shape."""
    for name in shapes:
        shape, (fwd, bwd) = SHAPES[name], CONFIGS[name]
        head_dim, stride = shape.channels // HEADS, shape.stride
        q, k, v = torch.randn(
            3,
            shape.batch,
            HEADS,
            head_dim,
            shape.height,
            shape.width,
            device='cuda',
            dtype=dtype).unbind(0)
        scale = head_dim**-0.5
        out, lse = triton_kernels.local_attention_forward(
            q, k, v, KERNEL, stride, scale, config=fwd)
        grads = triton_kernels.local_attention_backward(
            torch.randn_like(out),
            q,
            k,
            v,
            out,
            lse,
            KERNEL,
            stride,
            scale,
            config=bwd)
        torch.cuda.synchronize()
        if not all(torch.isfinite(t).all() for t in (out, *grads)):
            sys.exit(f'error: non-finite results at {name}')
        design = triton_kernels.kernel_design(head_dim, stride)
        kernels = ','.join(triton_kernels.KERNEL_DESIGNS[design].names())
        print(f'{TAG} {name} {out.numel() // head_dim * KERNEL**2} {kernels}')


def tool_command(tool: str, *options: str) -> List[str]:
    """``tool options`` running this script on the same arguments, less
    the mode flag."""
    path = shutil.which(tool)
    if path is None:
        sys.exit(f'error: {tool} is not on the PATH (it ships with the '
                 f'CUDA toolkit)')
    args = [a for a in sys.argv[1:] if a not in ('--counters', '--memcheck')]
    return [path, *options, sys.executable, __file__, *args]


def counters_table(report: str) -> List[str]:
    """Table rows of ncu's --csv ``report`` of a run of this script."""
    launches = []  # (shape, useful logits) per kernel launch, in order
    for line in report.splitlines():
        if line.startswith(TAG):
            _, shape, logits, kernels = line.split()
            launches += [(shape, int(logits))] * len(kernels.split(','))
    values: Dict[str, Dict[str, float]] = {}
    names: Dict[str, str] = {}
    rows = [line for line in report.splitlines() if line.startswith('"')]
    for row in csv.DictReader(rows):
        names[row['ID']] = row['Kernel Name']
        values.setdefault(row['ID'], {})[row['Metric Name']] = float(
            row['Metric Value'].replace(',', ''))
    if len(values) != len(launches):
        sys.exit(f'error: ncu reported {len(values)} kernels, the run '
                 f'launched {len(launches)}')
    table = ['shape kernel ' + ' | '.join(METRICS.values())]
    for (shape, logits), (index, metrics) in zip(launches, values.items()):
        cells = [
            metrics['gpu__time_duration.sum'] / 1e3,
            metrics['smsp__inst_executed.sum'] * 32 / logits,
            metrics['dram__bytes_read.sum'] / 1e6,
            metrics['dram__bytes_write.sum'] / 1e6,
            metrics['launch__registers_per_thread'],
            metrics['sm__warps_active.avg.pct_of_peak_sustained_active'],
            metrics['smsp__issue_active.avg.pct_of_peak_sustained_active'],
        ]
        table.append(f'{shape} {names[index]} ' +
                     ' | '.join(f'{cell:.1f}' for cell in cells))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument(
        '--shapes', nargs='+', choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument(
        '--dtype',
        choices=['bfloat16', 'float16', 'float32'],
        default='bfloat16')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        '--counters',
        action='store_true',
        help='run under ncu and print its counters per kernel')
    mode.add_argument(
        '--memcheck',
        action='store_true',
        help='run under compute-sanitizer --tool memcheck')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error('needs a CUDA GPU (the kernels run once each, to be '
                     'profiled)')
    if args.counters:
        command = tool_command('ncu', '--clock-control', 'none',
                               '--kernel-name', 'regex:^_', '--metrics',
                               ','.join(METRICS), '--csv')
        report = subprocess.run(
            command, capture_output=True, text=True, check=True).stdout
        print('\n'.join(counters_table(report)))
    elif args.memcheck:
        command = tool_command('compute-sanitizer', '--tool', 'memcheck',
                               '--error-exitcode', '1')
        sys.exit(subprocess.run(command).returncode)
    else:
        run_layer(args.shapes, getattr(torch, args.dtype))


if __name__ == '__main__':
    main()
