"""Compile the fused ACmix kernels ahead of time for an NVIDIA GPU, without
one.

Triton's compiler does not need the GPU it compiles for. This builds every
kernel the fused op launches (forward, dQ, dK/dV) for each dtype, head dim,
window size, stride, map kind (ordinary or smaller than the window) and
autotuning config, for one architecture (default sm_90, the H100), with the
argument specialisations of a launch on contiguous tensors. Per variant it reports the shared memory, the registers
and stack bytes per thread (stack > 0 means register spills) and whether the
matmuls run on tensor cores (mma/wgmma instructions). Exits with status 1
if a variant fails to compile or needs more shared memory than the
architecture has.

Usage:
    python tools/analysis_tools/compile_kernels.py [--arch 90] \\
        [--dtypes float16 bfloat16 float32] [--head-dims 16 32 64 128] \\
        [--kernel-sizes 7] [--strides 1 2] [--small-maps 0 1] \\
        [--json report.json]

The defaults (ACmix-ResNet's window and head dims) compile 576 variants, a
quarter of an hour on 2 CPU cores; Triton caches them for the next run.
"""
import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

# The kernels must be compiled, not interpreted.
os.environ.pop('TRITON_INTERPRET', None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from acmix_mm.ops.local_attention_triton import (  # noqa: E402
    HEAD_DIM_MULTIPLE, KERNELS, MAX_HEAD_DIM, MIN_HEAD_DIM,
    SUPPORTED_KERNEL_SIZES, SUPPORTED_STRIDES, TUNING_CONFIGS, shape_meta)

# Shared memory a block may use (bytes, with opt-in) per compute capability.
SHARED_MEMORY_LIMITS = {
    80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448,
    100: 232448, 120: 101376
}
DTYPE_NAMES = {'float16': 'fp16', 'bfloat16': 'bf16', 'float32': 'fp32'}
STATISTICS_POINTERS = ('lse_ptr', 'delta_ptr')  # always float32
TENSOR_CORE_OPS = re.compile(r'\b(wgmma|mma)\.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', type=int, default=90,
                        help='compute capability, e.g. 80 (A100), 90 (H100)')
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPE_NAMES),
                        default=list(DTYPE_NAMES))
    parser.add_argument('--head-dims', nargs='+', type=int,
                        default=[16, 32, 64, 128])
    parser.add_argument('--kernel-sizes', nargs='+', type=int, default=[7],
                        choices=list(SUPPORTED_KERNEL_SIZES))
    parser.add_argument('--strides', nargs='+', type=int, default=[1, 2],
                        choices=list(SUPPORTED_STRIDES))
    parser.add_argument('--small-maps', nargs='+', type=int, choices=[0, 1],
                        default=[0, 1],
                        help='1: the variant for maps with a side smaller '
                        'than the window')
    parser.add_argument('--kernels', nargs='+', choices=list(KERNELS),
                        default=list(KERNELS))
    parser.add_argument('--json', help='also write the report here')
    return parser.parse_args()


def kernel_source(name: str, dtype: str, head_dim: int, kernel_size: int,
                  stride: int, small_map: bool) -> ASTSource:
    """The kernel with the constexprs of its launcher; column strides
    specialised to 1 and pointers to 16-byte alignment, as Triton does when
    launching on contiguous tensors."""
    spec = KERNELS[name]
    torch_dtype = getattr(torch, dtype)
    constexprs = dict(shape_meta(head_dim, kernel_size, stride, small_map),
                      **spec.tiling(kernel_size, stride, head_dim,
                                    torch_dtype).as_meta(),
                      **spec.extra_meta)
    signature, attrs = {}, {}
    for index, arg in enumerate(spec.kernel.arg_names):
        if arg.startswith('stride_') and arg.endswith('x'):
            constexprs[arg] = 1
        if arg in constexprs:
            signature[arg] = 'constexpr'
        elif arg.endswith('_ptr'):
            element = 'fp32' if arg in STATISTICS_POINTERS else \
                DTYPE_NAMES[dtype]
            signature[arg] = f'*{element}'
            attrs[(index, )] = [['tt.divisibility', 16]]
        elif arg == 'scale':
            signature[arg] = 'fp32'
        else:
            signature[arg] = 'i32'
    return ASTSource(spec.kernel, signature, constexprs, attrs)


def resource_usage(cubin: bytes) -> Dict[str, Optional[int]]:
    """Registers and stack bytes per thread, read with the cuobjdump that
    ships with Triton (None where it is missing)."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), 'backends',
                             'nvidia', 'bin', 'cuobjdump')
    usage = dict(registers=None, stack_bytes=None)
    if not os.path.isfile(cuobjdump):
        return usage
    with tempfile.NamedTemporaryFile(suffix='.cubin') as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([cuobjdump, '-res-usage', file.name],
                                capture_output=True, text=True).stdout
    registers = re.search(r'REG:(\d+)', report)
    stack = re.search(r'STACK:(\d+)', report)
    if registers and stack:
        usage.update(registers=int(registers.group(1)),
                     stack_bytes=int(stack.group(1)))
    return usage


def compile_variant(target: GPUTarget, name: str, dtype: str, head_dim: int,
                    kernel_size: int, stride: int, small_map: bool,
                    num_warps: int, num_stages: int) -> dict:
    """Compile one variant; its report row (``error`` set on failure)."""
    row = dict(kernel=name, dtype=dtype, head_dim=head_dim,
               kernel_size=kernel_size, stride=stride, small_map=small_map,
               num_warps=num_warps, num_stages=num_stages, error=None)
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            kernel_source(name, dtype, head_dim, kernel_size, stride,
                          small_map),
            target=target,
            options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as error:  # report every failure, then exit 1
        row['error'] = f'{type(error).__name__}: {error}'.splitlines()[0]
        return row
    row.update(shared_bytes=compiled.metadata.shared,
               tensor_cores=bool(TENSOR_CORE_OPS.search(
                   compiled.asm['ptx'])),
               compile_s=round(time.perf_counter() - start, 2),
               **resource_usage(compiled.asm['cubin']))
    return row


def main() -> None:
    args = parse_args()
    if args.arch not in SHARED_MEMORY_LIMITS:
        sys.exit(f'error: unknown --arch {args.arch}; known: '
                 f'{sorted(SHARED_MEMORY_LIMITS)}')
    for head_dim in args.head_dims:
        if (not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM
                or head_dim % HEAD_DIM_MULTIPLE):
            sys.exit(f'error: head dims must be multiples of '
                     f'{HEAD_DIM_MULTIPLE} in [{MIN_HEAD_DIM}, '
                     f'{MAX_HEAD_DIM}], got {head_dim}')
    shared_limit = SHARED_MEMORY_LIMITS[args.arch]
    target = GPUTarget('cuda', args.arch, 32)
    rows: List[dict] = []
    print(f'{"kernel":<15}{"dtype":<9}{"D":>4}{"k":>3}{"s":>3}{"small":>6}'
          f'{"warps":>6}{"stages":>7}{"shared KB":>10}{"regs":>6}'
          f'{"stack":>6}{"tensor cores":>13}')
    variants = itertools.product(args.kernels, args.dtypes, args.head_dims,
                                 args.kernel_sizes, args.strides,
                                 args.small_maps, TUNING_CONFIGS)
    for name, dtype, head_dim, kernel_size, stride, small_map, (
            num_warps, num_stages) in variants:
        row = compile_variant(target, name, dtype, head_dim, kernel_size,
                              stride, bool(small_map), num_warps, num_stages)
        rows.append(row)
        print(format_row(row, shared_limit), flush=True)
    failed = [row for row in rows if row['error']
              or row['shared_bytes'] > shared_limit]
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(dict(arch=args.arch, shared_limit=shared_limit,
                           triton=triton.__version__, variants=rows), file,
                      indent=1)
    print(f'{len(rows)} variants for sm_{args.arch} (Triton '
          f'{triton.__version__}): {len(failed)} failed')
    if failed:
        sys.exit(1)


def format_row(row: dict, shared_limit: int) -> str:
    head = (f'{row["kernel"]:<15}{row["dtype"]:<9}{row["head_dim"]:>4}'
            f'{row["kernel_size"]:>3}{row["stride"]:>3}'
            f'{"yes" if row["small_map"] else "no":>6}{row["num_warps"]:>6}'
            f'{row["num_stages"]:>7}')
    if row['error']:
        return f'{head}  FAILED: {row["error"]}'
    too_big = '  over the shared memory limit' \
        if row['shared_bytes'] > shared_limit else ''
    return (f'{head}{row["shared_bytes"] / 1024:>10.1f}'
            f'{row["registers"] if row["registers"] is not None else "-":>6}'
            f'{row["stack_bytes"] if row["stack_bytes"] is not None else "-":>6}'
            f'{"yes" if row["tensor_cores"] else "no":>13}{too_big}')


if __name__ == '__main__':
    main()
