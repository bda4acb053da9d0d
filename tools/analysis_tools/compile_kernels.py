"""Compile the fused ACmix kernels ahead of time for an NVIDIA GPU, without
one.

Triton's compiler does not need the GPU it compiles for. This builds every
kernel the fused op launches (forward, dQ, dK/dV) for each dtype, head dim,
window size, stride, map kind (ordinary or smaller than the window) and
autotuning config, for one architecture (default sm_90, the H100), with the
argument specialisations of a launch on contiguous tensors. Per variant it
reports the shared memory, the registers and stack bytes per thread (stack
> 0 means register spills; read with the cuobjdump Triton ships, '-' where
it ships none, as Triton 2.1) and whether the matmuls run on tensor cores
(mma/wgmma instructions; Triton 2.x runs float32 dots exactly on the FMA
units, so 'no' is expected there for float32). Variants compile in a
forked worker process, so that a compiler crash fails that variant only.
Exits with status 1 if a variant fails to compile or needs more shared
memory than the architecture has.

Supported Triton versions: 2.1 and 2.2 (``triton.compile`` with keyword
arguments) and 3.3 or later (``ASTSource``, constexprs in the signature).
2.3 and 3.0-3.2 have compile APIs of their own and are refused.

Usage:
    python tools/analysis_tools/compile_kernels.py [--arch 90] \\
        [--dtypes float16 bfloat16 float32] [--head-dims 16 32 64 128] \\
        [--kernel-sizes 7] [--strides 1 2] [--small-maps 0 1] \\
        [--tuning-configs 4,1 4,2 8,1 8,2] [--json report.json]

The defaults (ACmix-ResNet's window and head dims) compile 576 variants, a
quarter of an hour on 2 CPU cores; Triton caches them for the next run.
"""
import argparse
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import (Any, Callable, Dict, Iterable, Iterator, List, NamedTuple,
                    Optional, Tuple)
from unittest import mock

# The kernels must be compiled, not interpreted.
os.environ.pop('TRITON_INTERPRET', None)

import torch
import triton
from triton.runtime.jit import JITFunction

from acmix_mm.ops.triton_kernels import (HEAD_DIM_MULTIPLE, KERNELS,
                                         MAX_HEAD_DIM, MIN_HEAD_DIM,
                                         SUPPORTED_KERNEL_SIZES,
                                         SUPPORTED_STRIDES, TUNING_CONFIGS,
                                         available_kernels, shape_meta)

# Shared memory a block may use (bytes, with opt-in) per compute capability.
SHARED_MEMORY_LIMITS = {
    80: 166912,
    86: 101376,
    87: 166912,
    89: 101376,
    90: 232448,
    100: 232448,
    120: 101376
}
DTYPE_NAMES = {'float16': 'fp16', 'bfloat16': 'bf16', 'float32': 'fp32'}
STATISTICS_POINTERS = ('lse_ptr', 'delta_ptr')  # always float32
TENSOR_CORE_OPS = re.compile(r'\b(wgmma|mma)\.')
# Where Triton ships cuobjdump: 3.x, then 2.2-2.3 (2.1 ships none).
CUOBJDUMP_PATHS = ('backends/nvidia/bin/cuobjdump',
                   'third_party/cuda/bin/cuobjdump')
TRITON_VERSION = tuple(
    int(part) for part in re.findall(r'\d+', triton.__version__)[:2])


class Launch(NamedTuple):
    """A kernel with the arguments of one variant, specialised as Triton
    specialises a launch on contiguous tensors."""
    kernel: JITFunction
    constexprs: Dict[str, Any]  # the kernel's constexpr parameters
    types: Dict[str, str]  # Triton type of every other argument
    ones: Tuple[str, ...]  # integer arguments equal to 1 (column strides)
    aligned: Tuple[str, ...]  # pointers divisible by 16


class Variant(NamedTuple):
    """One compiled form of a kernel."""
    kernel: str
    dtype: str
    head_dim: int
    kernel_size: int
    stride: int
    small_map: bool
    num_warps: int
    num_stages: int


class Binary(NamedTuple):
    """What the report reads from a compiled kernel."""
    shared_bytes: int
    ptx: str
    cubin: bytes


# (launch, compute capability, num_warps, num_stages) -> binary
CompileFn = Callable[[Launch, int, int, int], Binary]


def parse_tuning_config(text: str) -> Tuple[int, int]:
    """'W,S' -> (num_warps, num_stages), one of TUNING_CONFIGS."""
    try:
        config = tuple(int(part) for part in text.split(','))
    except ValueError:
        config = None
    if config not in TUNING_CONFIGS:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not one of ' +
            ', '.join(f'{warps},{stages}' for warps, stages in TUNING_CONFIGS))
    return config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--arch',
        type=int,
        default=90,
        help='compute capability, e.g. 80 (A100), 90 (H100)')
    parser.add_argument(
        '--dtypes',
        nargs='+',
        choices=list(DTYPE_NAMES),
        default=list(DTYPE_NAMES))
    parser.add_argument(
        '--head-dims', nargs='+', type=int, default=[16, 32, 64, 128])
    parser.add_argument(
        '--kernel-sizes',
        nargs='+',
        type=int,
        default=[7],
        choices=list(SUPPORTED_KERNEL_SIZES))
    parser.add_argument(
        '--strides',
        nargs='+',
        type=int,
        default=[1, 2],
        choices=list(SUPPORTED_STRIDES))
    parser.add_argument(
        '--small-maps',
        nargs='+',
        type=int,
        choices=[0, 1],
        default=[0, 1],
        help='1: the variant for maps with a side smaller '
        'than the window')
    parser.add_argument(
        '--kernels',
        nargs='+',
        choices=list(KERNELS),
        default=list(available_kernels()),
        help='default: those the installed Triton compiles')
    parser.add_argument(
        '--tuning-configs',
        nargs='+',
        type=parse_tuning_config,
        metavar='W,S',
        help='(num_warps, num_stages) to compile (default: those each '
        "kernel's autotuner tries)")
    parser.add_argument('--json', help='also write the report here')
    return parser.parse_args()


def kernel_launch(variant: Variant) -> Launch:
    """The variant's kernel with the constexprs of its launcher; column
    strides specialised to 1 and pointers to 16-byte alignment; with head-
    contiguous inputs (``KernelSpec.vector_inputs``, loaded as vectors),
    their strides in vector units (channel stride 1)."""
    spec = KERNELS[variant.kernel]
    constexprs = dict(
        shape_meta(variant.head_dim, variant.kernel_size, variant.stride,
                   variant.small_map),
        **spec.tiling(variant.kernel_size, variant.stride, variant.head_dim,
                      getattr(torch, variant.dtype)).as_meta(),
        **spec.extra_meta)
    ones = [
        arg for arg in spec.kernel.arg_names
        if arg.startswith('stride_') and arg.endswith('x')
    ]
    vector = 16 // getattr(torch, variant.dtype).itemsize
    for name in spec.vector_inputs:
        constexprs[f'{name.upper()}_VECTOR'] = vector
        ones.append(f'stride_{name}d')
        if variant.head_dim != vector:  # stride_{name}x: head_dim / vector
            ones.remove(f'stride_{name}x')
    types, aligned = {}, []
    for arg in spec.kernel.arg_names:
        if arg in constexprs:
            continue
        if arg.endswith('_ptr'):
            element = 'fp32' if arg in STATISTICS_POINTERS else \
                DTYPE_NAMES[variant.dtype]
            types[arg] = f'*{element}'
            aligned.append(arg)
        elif arg == 'scale':
            types[arg] = 'fp32'
        else:
            types[arg] = 'i32'
    return Launch(spec.kernel, constexprs, types, tuple(ones), tuple(aligned))


def compile_with_keywords(launch: Launch, arch: int, num_warps: int,
                          num_stages: int) -> Binary:
    """Triton 2.1-2.2: ``triton.compile(fn, signature=..., ...)`` with
    arguments keyed by index. Its launcher stub needs libcuda, so the stub
    and the kernel object that loads it are replaced by a capture of the
    device code."""
    from triton.compiler import compiler
    index = {arg: i for i, arg in enumerate(launch.kernel.arg_names)}
    constants = {index[arg]: value for arg, value in launch.constexprs.items()}
    constants.update({index[arg]: 1 for arg in launch.ones})
    specialisation = compiler.instance_descriptor(
        divisible_by_16={index[arg]
                         for arg in launch.aligned},
        equal_to_1={index[arg]
                    for arg in launch.ones})

    def capture(fn: Any, so_path: Any, metadata: dict, asm: dict) -> Binary:
        return Binary(metadata['shared'], asm['ptx'], asm['cubin'])

    with mock.patch.object(compiler, 'make_stub'), \
            mock.patch.object(compiler, 'CompiledKernel', capture):
        return triton.compile(
            launch.kernel,
            signature={
                index[arg]: ty
                for arg, ty in launch.types.items()
            },
            constants=constants,
            configs=[specialisation],
            cc=arch,
            num_warps=num_warps,
            num_stages=num_stages)


def compile_ast_source(launch: Launch, arch: int, num_warps: int,
                       num_stages: int) -> Binary:
    """Triton >= 3.3: an ``ASTSource`` whose signature holds the constexprs
    (arguments equal to 1 among them) and a target."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature, constexprs, attrs = {}, {}, {}
    for index, arg in enumerate(launch.kernel.arg_names):
        if arg in launch.types and arg not in launch.ones:
            signature[arg] = launch.types[arg]
        else:
            signature[arg] = 'constexpr'
            constexprs[arg] = launch.constexprs.get(arg, 1)
        if arg in launch.aligned:
            attrs[(index, )] = [['tt.divisibility', 16]]
    compiled = triton.compile(
        ASTSource(launch.kernel, signature, constexprs, attrs),
        target=GPUTarget('cuda', arch, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages))
    return Binary(compiled.metadata.shared, compiled.asm['ptx'],
                  compiled.asm['cubin'])


def triton_compiler() -> CompileFn:
    """The compile function for the installed Triton's API."""
    if (2, 1) <= TRITON_VERSION < (2, 3):
        return compile_with_keywords
    if TRITON_VERSION >= (3, 3):
        return compile_ast_source
    sys.exit(f'error: the compile API of Triton {triton.__version__} is '
             f'not supported; supported: 2.1, 2.2 and >= 3.3')


def find_cuobjdump() -> Optional[str]:
    """The cuobjdump that ships with Triton, None where it ships none."""
    paths = (
        os.path.join(os.path.dirname(triton.__file__), path)
        for path in CUOBJDUMP_PATHS)
    return next((path for path in paths if os.path.isfile(path)), None)


def resource_usage(cubin: bytes) -> Dict[str, Optional[int]]:
    """Registers and stack bytes per thread, read with the cuobjdump that
    ships with Triton (None where it is missing)."""
    usage = dict(registers=None, stack_bytes=None)
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        return usage
    with tempfile.NamedTemporaryFile(suffix='.cubin') as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([cuobjdump, '-res-usage', file.name],
                                capture_output=True,
                                text=True).stdout
    registers = re.search(r'REG:(\d+)', report)
    stack = re.search(r'STACK:(\d+)', report)
    if registers and stack:
        usage.update(
            registers=int(registers.group(1)), stack_bytes=int(stack.group(1)))
    return usage


def compile_variant(compile_fn: CompileFn, arch: int,
                    variant: Variant) -> dict:
    """Compile one variant; its report row (``error`` set on failure)."""
    row = dict(variant._asdict(), error=None)
    start = time.perf_counter()
    try:
        binary = compile_fn(
            kernel_launch(variant), arch, variant.num_warps,
            variant.num_stages)
    except Exception as error:  # report every failure, then exit 1
        row['error'] = f'{type(error).__name__}: {error}'.splitlines()[0]
        return row
    row.update(
        shared_bytes=binary.shared_bytes,
        tensor_cores=bool(TENSOR_CORE_OPS.search(binary.ptx)),
        compile_s=round(time.perf_counter() - start, 2),
        **resource_usage(binary.cubin))
    return row


def compile_in_worker(compile_fn: CompileFn, arch: int,
                      variants: Iterable[Variant]) -> Iterator[dict]:
    """:func:`compile_variant` of each variant in a forked worker process,
    so that a compiler crash (an LLVM abort, its message on stderr) fails
    that variant only; a new worker takes over after a crash."""
    fork = multiprocessing.get_context('fork')
    worker = None
    try:
        for variant in variants:
            worker = worker or ProcessPoolExecutor(1, mp_context=fork)
            try:
                yield worker.submit(compile_variant, compile_fn, arch,
                                    variant).result()
            except BrokenProcessPool:
                worker.shutdown()
                worker = None
                yield dict(
                    variant._asdict(), error='compiler crashed (see stderr)')
    finally:
        if worker:
            worker.shutdown()


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
    compile_fn = triton_compiler()
    shared_limit = SHARED_MEMORY_LIMITS[args.arch]
    if TRITON_VERSION < (3, 0):
        print(f'Triton {triton.__version__} runs float32 dots on the FMA '
              f'units: no tensor cores for float32')
    rows: List[dict] = []
    print(f'{"kernel":<25}{"dtype":<9}{"D":>4}{"k":>3}{"s":>3}{"small":>6}'
          f'{"warps":>6}{"stages":>7}{"shared KB":>10}{"regs":>6}'
          f'{"stack":>6}{"tensor cores":>13}')
    variants = (
        Variant(name, dtype, head_dim, kernel_size, stride, bool(small_map),
                num_warps, num_stages)
        for name, dtype, head_dim, kernel_size, stride, small_map in
        itertools.product(args.kernels, args.dtypes, args.head_dims,
                          args.kernel_sizes, args.strides, args.small_maps)
        for num_warps, num_stages in (
            args.tuning_configs
            or KERNELS[name].configs(head_dim, stride, bool(small_map))))
    for row in compile_in_worker(compile_fn, args.arch, variants):
        rows.append(row)
        print(format_row(row, shared_limit), flush=True)
    failed = [
        row for row in rows
        if row['error'] or row['shared_bytes'] > shared_limit
    ]
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(
                dict(
                    arch=args.arch,
                    shared_limit=shared_limit,
                    triton=triton.__version__,
                    variants=rows),
                file,
                indent=1)
    print(f'{len(rows)} variants for sm_{args.arch} (Triton '
          f'{triton.__version__}): {len(failed)} failed')
    if failed:
        sys.exit(1)


def dash_if_none(value: Optional[int]) -> str:
    return '-' if value is None else str(value)


def format_row(row: dict, shared_limit: int) -> str:
    head = (f'{row["kernel"]:<25}{row["dtype"]:<9}{row["head_dim"]:>4}'
            f'{row["kernel_size"]:>3}{row["stride"]:>3}'
            f'{"yes" if row["small_map"] else "no":>6}{row["num_warps"]:>6}'
            f'{row["num_stages"]:>7}')
    if row['error']:
        return f'{head}  FAILED: {row["error"]}'
    too_big = '  over the shared memory limit' \
        if row['shared_bytes'] > shared_limit else ''
    return (f'{head}{row["shared_bytes"] / 1024:>10.1f}'
            f'{dash_if_none(row["registers"]):>6}'
            f'{dash_if_none(row["stack_bytes"]):>6}'
            f'{"yes" if row["tensor_cores"] else "no":>13}{too_big}')


if __name__ == '__main__':
    main()
