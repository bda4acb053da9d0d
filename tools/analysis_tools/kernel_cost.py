"""Model the cost of the fused ACmix kernels on an NVIDIA GPU, without one.

Each kernel variant (kernel, dtype, head dim, stride, tuning config) is
compiled ahead of time for the architecture (as compile_kernels.py does, in
a forked worker), and its SASS is read with the cuobjdump Triton ships. The
hot loop is the code between a backward branch and its target (the kernels
have one runtime loop; where the SASS has several backward branches, the one
with the largest body, and the record counts them; where it has none, the
compiler unrolled the loop into the total). At each benchmark shape
of the variant's head dim and stride (benchmark_acmix.py's), a program
issues ``(total - loop) + loop * loop_trips`` instructions (``launch_plan``
gives the grid and the trips), for each of its 32 * num_warps threads. The
modelled time is the largest of

- issue: thread-instructions / (SMs * 4 schedulers * 32 lanes * clock),
- MUFU: MUFU thread-instructions / (SMs * 16 per clock * clock),
- DRAM: compulsory bytes (each tensor moved once; a kernel that does part
  of the work, the slot dK/dV of interior or of edge tiles, its share) /
  peak HBM bandwidth,

a lower bound: no latency, no wave quantisation, no occupancy effect. The
DRAM term alone is the roofline. Occupancy (blocks per SM from registers,
shared memory, warps and blocks) is reported beside it. ``--measured``
adds the kernel times of a benchmark_acmix.py run (its ``op`` rows).
Every assumption is printed at the top of the report. Without cuobjdump
(Triton 2.1) the SASS-derived fields are '-'. Exits with status 1 if a
variant fails to compile.

Usage:
    python tools/analysis_tools/kernel_cost.py [--arch 90 80] \\
        [--dtypes bfloat16] [--head-dims 16 32] [--strides 1 2] \\
        [--kernels forward] [--tuning-configs 4,2] [--shapes coco in224] \\
        [--jobs 1] [--json cost.json] [--measured benchmark_acmix.json]
"""
import argparse
import itertools
import json
import math
import re
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

# First: importing it selects compiled (not interpreted) kernels.
import compile_kernels  # noqa: F401

# isort: split
import torch
import triton
from benchmark_acmix import (COCO_SHAPES, HEADS, IMAGENET_SHAPES, KERNEL,
                             OpShape)
from compile_kernels import (DTYPE_NAMES, SHARED_MEMORY_LIMITS, CompileFn,
                             Variant, compile_in_worker, find_cuobjdump,
                             kernel_launch, parse_tuning_config,
                             triton_compiler)

import acmix_mm.ops.triton_kernels as triton_kernels
from acmix_mm.ops.triton_kernels import (HEAD_DIM_MULTIPLE, KERNEL_DESIGNS,
                                         KERNELS, MAX_HEAD_DIM, MIN_HEAD_DIM,
                                         SUPPORTED_KERNEL_SIZES,
                                         SUPPORTED_STRIDES, LaunchPlan,
                                         available_kernels)

BENCHMARK_SHAPES = COCO_SHAPES + IMAGENET_SHAPES


class Gpu(NamedTuple):
    """The GPU an architecture is modelled by."""
    name: str
    sms: int
    clock_hz: float  # boost clock
    hbm_bytes_per_s: float  # peak
    achievable_bytes_per_s: Optional[float]  # what copies reach, if known
    shared_per_sm: int  # bytes the blocks of an SM share
    device_names: Tuple[str, ...]  # torch device names of this GPU


GPUS = {
    80:
    Gpu('A100 SXM 80GB', 108, 1.41e9, 2.039e12, None, 164 * 1024,
        ('A100-SXM4-80GB', )),
    90:
    Gpu('H100 SXM', 132, 1.755e9, 3.35e12, 3.0e12, 228 * 1024,
        ('H100 80GB HBM3', 'H100 SXM')),
}
# Per SM, sm_80 and sm_90 alike.
SCHEDULERS_PER_SM = 4  # each issues one warp-instruction (32 lanes) a clock
MUFU_PER_CLOCK = 16  # thread-results per clock per SM
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are allocated per warp in these units
MAX_REGISTERS_PER_THREAD = 255
WARP_ALLOCATION_UNIT = 4  # one warp per SM sub-partition
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SHARED_RESERVED_PER_BLOCK = 1024  # the runtime's
SHARED_UNIT = 128  # shared memory is allocated in these units
STATISTIC_BYTES = 4  # lse and delta are float32

# SASS base opcode (before the first '.') -> class; the rest is 'other'
# (moves, predicates, barriers, uniform datapath, branches).
INSTRUCTION_CLASSES = {
    'tensor_core': ('HMMA', 'HGMMA', 'IMMA', 'IGMMA', 'QGMMA', 'DMMA'),
    'mufu': ('MUFU', ),
    'global_memory':
    ('LDG', 'STG', 'LDGSTS', 'RED', 'ATOMG', 'UTMALDG', 'UTMASTG'),
    'shared_memory': ('LDS', 'STS', 'LDSM', 'STSM', 'ATOMS'),
    'local_memory': ('LDL', 'STL'),
    'shuffle': ('SHFL', ),
    'integer_alu':
    ('IADD3', 'IADD', 'IMAD', 'IMUL', 'IMNMX', 'VIMNMX', 'VIADD', 'VIADDMNMX',
     'ISETP', 'LOP3', 'LOP', 'SHF', 'LEA', 'SEL', 'PRMT', 'IABS', 'SGXT',
     'BMSK', 'POPC', 'FLO', 'BREV', 'IDP'),
    'float_alu':
    ('FADD', 'FMUL', 'FFMA', 'FMNMX', 'FSEL', 'FSET', 'FSETP', 'FCHK', 'HADD2',
     'HMUL2', 'HFMA2', 'HMNMX2', 'HSETP2', 'DADD', 'DMUL', 'DFMA', 'DSETP'),
    'conversion': ('F2F', 'F2FP', 'F2I', 'I2F', 'I2FP', 'FRND'),
}
CLASS_OF_OPCODE = {
    opcode: name
    for name, opcodes in INSTRUCTION_CLASSES.items()
    for opcode in opcodes
}
INSTRUCTION_CLASS_NAMES = (*INSTRUCTION_CLASSES, 'other')
# '/*07f0*/  @!P2 BRA 0xf60 ;' -> address, predicate, opcode, operands
SASS_LINE = re.compile(r'^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[0-9T]+\s+)?(\S+)'
                       r'\s*(.*?)\s*;')
HEX = re.compile(r'0x([0-9a-f]+)')


class Traffic(NamedTuple):
    """Compulsory traffic of a kernel or pass: tensors the size of the
    query grid (per channel), of the input map, and float32 statistics
    (one per query)."""
    query_maps: int
    input_maps: int
    statistics: int
    tensors: str  # what is moved


# Compulsory traffic of each kernel's part of the op (a KernelSet field),
# the same in every design.
PART_TRAFFIC = {
    'forward':
    Traffic(2, 2, 1, 'reads q at the queries, k, v; writes out, lse'),
    'grad_query':
    Traffic(
        3, 3, 2, 'reads q at the queries, k, v, out, grad_out, lse; '
        'writes dq (input size), delta'),
    'grad_key_value':
    Traffic(
        2, 4, 2, 'reads q at the queries, k, v, grad_out, lse, delta; '
        'writes dk, dv'),
}
# A split part's kernels share its traffic (LaunchPlan.share).
PART_TRAFFIC['edge_grad_key_value'] = PART_TRAFFIC['grad_key_value']
KERNEL_TRAFFIC = {
    name: PART_TRAFFIC[part]
    for design in KERNEL_DESIGNS.values()
    for part, name in design._asdict().items() if name is not None
}
OP_TRAFFIC = {
    'forward':
    Traffic(2, 2, 1, 'reads q at the queries, k, v; writes out, lse'),
    'backward':
    Traffic(
        3, 5, 1, 'reads q at the queries, k, v, out, grad_out, lse; '
        'writes dq, dk, dv'),
}


class Instruction(NamedTuple):
    """One SASS instruction."""
    address: int
    opcode: str  # with its modifiers, e.g. 'MUFU.EX2'
    operands: str


class SassProfile(NamedTuple):
    """Static instruction counts of a kernel's SASS."""
    total_instructions: int
    loop_instructions: int  # in the hot loop's body, its branch included
    backward_branches: int  # loops in the SASS; the largest is the hot one
    total_classes: Dict[str, int]  # instruction class -> count
    loop_classes: Dict[str, int]  # instruction class -> count in the loop


class Occupancy(NamedTuple):
    """Resident blocks of one kernel per SM and what limits them."""
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # of MAX_WARPS_PER_SM
    limit: str  # 'registers', 'shared', 'warps' or 'blocks'


class ModelledTime(NamedTuple):
    """The model's terms (microseconds) and the largest."""
    issue_us: float
    mufu_us: float
    dram_us: Optional[float]  # None: the kernel's traffic is unknown
    modelled_us: float
    bound: str  # 'issue', 'mufu' or 'dram'


def parse_sass(text: str) -> List[Instruction]:
    """The instructions of the first function in ``cuobjdump -sass``
    output, without NOPs and the branch-to-itself that ends the code."""
    instructions = []
    functions = 0
    for line in text.splitlines():
        if 'Function :' in line:
            functions += 1
            if functions > 1:
                break
        match = SASS_LINE.match(line)
        if not match:
            continue
        address, _, opcode, operands = match.groups()
        instruction = Instruction(int(address, 16), opcode, operands)
        if opcode == 'NOP' or branch_target(instruction) == \
                instruction.address:
            continue
        instructions.append(instruction)
    return instructions


def branch_target(instruction: Instruction) -> Optional[int]:
    """Address a direct branch (BRA) jumps to; None for other
    instructions."""
    if instruction.opcode.split('.')[0] != 'BRA':
        return None
    targets = HEX.findall(instruction.operands)
    return int(targets[-1], 16) if targets else None


def instruction_class(opcode: str) -> str:
    """The class (INSTRUCTION_CLASSES) of a SASS opcode."""
    return CLASS_OF_OPCODE.get(opcode.split('.')[0], 'other')


def profile_sass(text: str) -> SassProfile:
    """Total and hot-loop instruction counts of ``cuobjdump -sass``
    output. The hot loop runs from a backward branch's target to the
    branch; with several backward branches, the one with the largest
    body. No backward branch (the compiler unrolled the loop, whose
    iterations are then all in the total): an empty loop."""
    instructions = parse_sass(text)
    loops = []
    for instruction in instructions:
        target = branch_target(instruction)
        if target is not None and target < instruction.address:
            loops.append([
                other for other in instructions
                if target <= other.address <= instruction.address
            ])
    body = max(loops, key=len, default=[])
    return SassProfile(
        len(instructions), len(body), len(loops), class_counts(instructions),
        class_counts(body))


def class_counts(instructions: Iterable[Instruction]) -> Dict[str, int]:
    """Instructions per class, every class named."""
    counts = dict.fromkeys(INSTRUCTION_CLASS_NAMES, 0)
    for instruction in instructions:
        counts[instruction_class(instruction.opcode)] += 1
    return counts


def dump_sass(cubin: bytes) -> Optional[str]:
    """``cuobjdump -sass`` of a cubin; None without cuobjdump."""
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        return None
    with tempfile.NamedTemporaryFile(suffix='.cubin') as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([cuobjdump, '-sass', file.name],
                              capture_output=True,
                              text=True,
                              check=True).stdout


def occupancy(gpu: Gpu, registers: int, num_warps: int, shared_bytes: int,
              shared_limit: int) -> Occupancy:
    """Blocks of ``num_warps`` warps resident per SM. Registers: per warp,
    in units of REGISTER_UNIT, the warps they allow rounded down to
    WARP_ALLOCATION_UNIT; shared memory: in units of SHARED_UNIT plus
    SHARED_RESERVED_PER_BLOCK per block. 0 blocks: it does not fit (over
    MAX_REGISTERS_PER_THREAD or the per-block shared limit)."""
    if registers > MAX_REGISTERS_PER_THREAD or shared_bytes > shared_limit:
        return Occupancy(
            0, 0, 0.0,
            'registers' if registers > MAX_REGISTERS_PER_THREAD else 'shared')
    registers_per_warp = round_up(registers * 32, REGISTER_UNIT)
    warps_by_registers = (
        REGISTERS_PER_SM // registers_per_warp // WARP_ALLOCATION_UNIT *
        WARP_ALLOCATION_UNIT)
    shared_per_block = (
        round_up(shared_bytes, SHARED_UNIT) + SHARED_RESERVED_PER_BLOCK)
    limits = {
        'registers': warps_by_registers // num_warps,
        'shared': gpu.shared_per_sm // shared_per_block,
        'warps': MAX_WARPS_PER_SM // num_warps,
        'blocks': MAX_BLOCKS_PER_SM,
    }
    limit = min(limits, key=limits.get)
    blocks = limits[limit]
    return Occupancy(blocks, blocks * num_warps,
                     blocks * num_warps / MAX_WARPS_PER_SM, limit)


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def query_count(shape: OpShape) -> int:
    """Queries of the op at ``shape``: B * heads * output pixels."""
    return (shape.batch * HEADS * math.ceil(shape.height / shape.stride) *
            math.ceil(shape.width / shape.stride))


def compulsory_bytes(traffic: Traffic, shape: OpShape, dtype: str) -> int:
    """Bytes ``traffic`` moves at ``shape``, each tensor once."""
    element = getattr(torch, dtype).itemsize
    head_dim = shape.channels // HEADS
    queries = query_count(shape)
    input_pixels = shape.batch * HEADS * shape.height * shape.width
    return (
        element * head_dim *
        (traffic.query_maps * queries + traffic.input_maps * input_pixels) +
        STATISTIC_BYTES * traffic.statistics * queries)


def issue_rate(gpu: Gpu) -> float:
    """Thread-instructions the GPU issues per second."""
    return gpu.sms * SCHEDULERS_PER_SM * 32 * gpu.clock_hz


def mufu_rate(gpu: Gpu) -> float:
    """MUFU thread-results per second."""
    return gpu.sms * MUFU_PER_CLOCK * gpu.clock_hz


def model_time(gpu: Gpu, thread_instructions: float,
               mufu_thread_instructions: float,
               traffic_bytes: Optional[int]) -> ModelledTime:
    """The largest of issue, MUFU and DRAM time (microseconds)."""
    terms = {
        'issue': thread_instructions / issue_rate(gpu) * 1e6,
        'mufu': mufu_thread_instructions / mufu_rate(gpu) * 1e6,
    }
    if traffic_bytes is not None:
        terms['dram'] = traffic_bytes / gpu.hbm_bytes_per_s * 1e6
    bound = max(terms, key=terms.get)
    return ModelledTime(terms['issue'], terms['mufu'], terms.get('dram'),
                        terms[bound], bound)


def shape_plan(kernel: str, shape: OpShape, kernel_size: int, stride: int,
               dtype: str) -> LaunchPlan:
    """How ``kernel`` covers the benchmark shape (HEADS heads)."""
    return KERNELS[kernel].launch_plan(
        (shape.batch, HEADS, shape.channels // HEADS, shape.height,
         shape.width), kernel_size, stride, getattr(torch, dtype))


def matching_shapes(variant: Variant,
                    shapes: Sequence[OpShape]) -> List[OpShape]:
    """The shapes that launch ``variant`` (benchmark shapes run the op
    with window KERNEL): not the slot dK/dV of interior tiles where a map
    has none."""

    def launches(shape: OpShape) -> bool:
        small_map = min(shape.height, shape.width) <= variant.kernel_size // 2
        return (shape.channels // HEADS == variant.head_dim
                and shape.stride == variant.stride
                and variant.kernel_size == KERNEL
                and variant.small_map == small_map
                and shape_plan(variant.kernel, shape, variant.kernel_size,
                               variant.stride, variant.dtype).programs > 0)

    return [shape for shape in shapes if launches(shape)]


VARIANT_FIELDS = ('total_instructions', 'loop_instructions',
                  'backward_branches', 'total_classes', 'loop_classes',
                  'blocks_per_sm', 'warps_per_sm', 'occupancy',
                  'occupancy_limit', 'fits')
SHAPE_FIELDS = ('programs', 'loop_trips', 'thread_instructions',
                'instructions_per_useful_logit', 'compulsory_bytes',
                'issue_us', 'mufu_us', 'modelled_us', 'roofline_us',
                'modelled_over_roofline', 'bound', 'measured_us',
                'measured_over_modelled')


def variant_record(row: dict, arch: int, sass: Optional[str]) -> dict:
    """The shape-independent fields of a variant: compile_kernels' row
    (compiled, or with its ``error``), its SASS profile and occupancy
    (None where unknown)."""
    record = dict(
        kernel=row['kernel'],
        arch=arch,
        dtype=row['dtype'],
        head_dim=row['head_dim'],
        stride=row['stride'],
        kernel_size=row['kernel_size'],
        small_map=row['small_map'],
        num_warps=row['num_warps'],
        num_stages=row['num_stages'],
        error=row['error'],
        registers=row.get('registers'),
        spill_bytes=row.get('stack_bytes'),
        shared_bytes=row.get('shared_bytes'),
        tensor_cores=row.get('tensor_cores'),
        **dict.fromkeys(VARIANT_FIELDS))
    if sass is not None:
        record.update(profile_sass(sass)._asdict())
    if record['registers'] is not None:
        fit = occupancy(GPUS[arch], record['registers'], record['num_warps'],
                        record['shared_bytes'], SHARED_MEMORY_LIMITS[arch])
        record.update(
            blocks_per_sm=fit.blocks_per_sm,
            warps_per_sm=fit.warps_per_sm,
            occupancy=fit.fraction,
            occupancy_limit=fit.limit,
            fits=fit.blocks_per_sm > 0)
    return record


def shape_record(record: dict, shape: Optional[OpShape]) -> dict:
    """``record`` at ``shape``: the launch, the modelled time and the
    roofline (None where unknown: no shape, no SASS, a kernel whose
    traffic KERNEL_TRAFFIC does not know)."""
    result = dict(
        record,
        shape=None if shape is None else shape.name,
        **dict.fromkeys(SHAPE_FIELDS))
    if shape is None or record['error']:
        return result
    gpu = GPUS[record['arch']]
    plan = shape_plan(record['kernel'], shape, record['kernel_size'],
                      record['stride'], record['dtype'])
    result.update(programs=plan.programs, loop_trips=plan.loop_trips)
    traffic_bytes = None
    if record['kernel'] in KERNEL_TRAFFIC:
        traffic_bytes = plan.share * compulsory_bytes(
            KERNEL_TRAFFIC[record['kernel']], shape, record['dtype'])
        result.update(
            compulsory_bytes=traffic_bytes,
            roofline_us=traffic_bytes / gpu.hbm_bytes_per_s * 1e6)
    if record['loop_instructions'] is None:
        return result
    threads = plan.programs * 32 * record['num_warps']

    def per_program(total: int, in_loop: int) -> int:
        return total + (plan.loop_trips - 1) * in_loop

    thread_instructions = threads * per_program(record['total_instructions'],
                                                record['loop_instructions'])
    mufu_thread_instructions = threads * per_program(
        record['total_classes']['mufu'], record['loop_classes']['mufu'])
    time = model_time(gpu, thread_instructions, mufu_thread_instructions,
                      traffic_bytes)
    result.update(
        thread_instructions=thread_instructions,
        instructions_per_useful_logit=thread_instructions /
        (query_count(shape) * record['kernel_size']**2),
        issue_us=time.issue_us,
        mufu_us=time.mufu_us,
        modelled_us=time.modelled_us,
        bound=time.bound)
    if time.dram_us is not None:
        result['modelled_over_roofline'] = time.modelled_us / time.dram_us
    return result


# (kernel, shape, dtype, num_warps, num_stages) -> measured microseconds
MeasuredTimes = Dict[Tuple[str, str, str, int, int], float]


def measured_arch(device: str) -> Optional[int]:
    """The modelled architecture whose GPU is ``device`` (a torch device
    name), None if it is none of GPUS."""
    for arch, gpu in GPUS.items():
        if any(name in device for name in gpu.device_names):
            return arch
    return None


def load_measured(path: str) -> Tuple[str, MeasuredTimes]:
    """The device and the fused kernels' times of a benchmark_acmix.py
    JSON (its ``op`` rows of impl 'triton' with ``kernel_ms``), keyed by
    the tuning config each kernel ran with."""
    with open(path) as file:
        result = json.load(file)
    times = {}
    for row in result.get('op', []):
        if row.get('impl') != 'triton' or not row.get('kernel_ms'):
            continue
        for kernel, milliseconds in row['kernel_ms'].items():
            config = row.get('tuning_configs', {}).get(kernel)
            if milliseconds is None or config is None:
                continue
            num_warps, num_stages = config
            times[(kernel, row['shape'], row['dtype'], num_warps,
                   num_stages)] = milliseconds * 1e3
    return result['device'], times


def attach_measured(records: Iterable[dict], arch: int,
                    times: MeasuredTimes) -> int:
    """Set ``measured_us`` and ``measured_over_modelled`` of the records
    of ``arch`` that ``times`` has; the number set."""
    matched = 0
    for record in records:
        key = (record['kernel'], record['shape'], record['dtype'],
               record['num_warps'], record['num_stages'])
        if record['arch'] != arch or key not in times:
            continue
        record['measured_us'] = times[key]
        if record['modelled_us'] is not None:
            record['measured_over_modelled'] = (
                times[key] / record['modelled_us'])
        matched += 1
    return matched


Task = Tuple[int, Variant]  # (arch, variant)


def analyse_variants(compile_fn: CompileFn, tasks: Sequence[Task],
                     jobs: int) -> List[dict]:
    """:func:`variant_record` of each (arch, variant), in task order.

    compile_kernels' :func:`compile_in_worker` compiles each variant in a
    forked worker, ``jobs`` of them at once (one thread each); a compiled
    variant is compiled again here, a hit of Triton's cache, for its
    cubin's SASS.
    """
    records: List[Optional[dict]] = [None] * len(tasks)
    cache_lock = threading.Lock()
    done = itertools.count(1)

    def analyse_share(indices: Sequence[int]) -> None:
        for arch, group in itertools.groupby(indices, lambda i: tasks[i][0]):
            same_arch = list(group)
            rows = compile_in_worker(compile_fn, arch,
                                     (tasks[i][1] for i in same_arch))
            for index, row in zip(same_arch, rows):
                variant = tasks[index][1]
                sass = None
                if row['error'] is None:
                    with cache_lock:
                        binary = compile_fn(
                            kernel_launch(variant), arch, variant.num_warps,
                            variant.num_stages)
                    sass = dump_sass(binary.cubin)
                records[index] = variant_record(row, arch, sass)
                print(
                    f'[{next(done)}/{len(tasks)}] sm_{arch} {variant.kernel} '
                    f'{variant.dtype} D{variant.head_dim} '
                    f'k{variant.kernel_size} s{variant.stride} '
                    f'{variant.num_warps},{variant.num_stages}' +
                    (f': FAILED: {row["error"]}' if row['error'] else ''),
                    file=sys.stderr,
                    flush=True)

    shares = [range(first, len(tasks), jobs) for first in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(analyse_share, shares))
    return records


def select_shapes(names: Sequence[str]) -> List[OpShape]:
    """The benchmark shapes named, or whose names start with a name."""
    shapes = [
        shape for shape in BENCHMARK_SHAPES if any(
            shape.name.startswith(name) for name in names)
    ]
    unknown = [
        name for name in names
        if not any(shape.name.startswith(name) for shape in BENCHMARK_SHAPES)
    ]
    if unknown:
        sys.exit(f'error: no benchmark shape is named {unknown}; known: ' +
                 ' '.join(shape.name for shape in BENCHMARK_SHAPES))
    return shapes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--arch',
        nargs='+',
        type=int,
        choices=sorted(GPUS),
        default=[90],
        help='compute capabilities to model: ' +
        ', '.join(f'{arch} ({gpu.name})' for arch, gpu in GPUS.items()))
    parser.add_argument(
        '--dtypes',
        nargs='+',
        choices=list(DTYPE_NAMES),
        default=list(DTYPE_NAMES),
        help='default: all')
    parser.add_argument(
        '--head-dims',
        nargs='+',
        type=int,
        default=sorted({shape.channels // HEADS
                        for shape in BENCHMARK_SHAPES}),
        help='default: those of the benchmark shapes')
    parser.add_argument(
        '--strides',
        nargs='+',
        type=int,
        choices=list(SUPPORTED_STRIDES),
        default=sorted({shape.stride
                        for shape in BENCHMARK_SHAPES}),
        help='default: those of the benchmark shapes')
    parser.add_argument(
        '--kernel-size',
        type=int,
        choices=list(SUPPORTED_KERNEL_SIZES),
        default=KERNEL,
        help=f'window (default {KERNEL}, the benchmark\'s; no benchmark '
        f'shape matches another)')
    parser.add_argument(
        '--small-map',
        action='store_true',
        help='the variant for maps with a side of at most kernel_size // 2 '
        '(no benchmark shape has one)')
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
        help='(num_warps, num_stages) to model (default: those each '
        "kernel's autotuner tries)")
    parser.add_argument(
        '--shapes',
        nargs='+',
        default=['coco'],
        metavar='NAME',
        help='benchmark shapes (benchmark_acmix.py) to model, by name or '
        'name prefix (default: coco; e.g. in224, coco/stage1)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=1,
        help='variants compiled at once (one process each)')
    parser.add_argument(
        '--json',
        metavar='FILE',
        help='also write the records (one per variant and matching shape; '
        'shape null where none matches) here')
    parser.add_argument(
        '--measured',
        metavar='FILE',
        help="benchmark_acmix.py's JSON: its fused kernel times "
        "('op' rows of impl 'triton') beside the modelled ones, for the "
        'same kernel, shape, dtype and tuning config, on the GPU of '
        '--arch')
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error('--jobs must be at least 1')
    for head_dim in args.head_dims:
        if (not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM
                or head_dim % HEAD_DIM_MULTIPLE):
            parser.error(
                f'head dims must be multiples of {HEAD_DIM_MULTIPLE} '
                f'in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {head_dim}')
    return args


def dash_if_none(value: object, spec: str = '') -> str:
    return '-' if value is None else format(value, spec)


def traffic_formula(traffic: Traffic, dtype: str) -> str:
    element = getattr(torch, dtype).itemsize
    return (f'{element}*D*({traffic.query_maps}*Q + {traffic.input_maps}*P)'
            f' + {STATISTIC_BYTES}*{traffic.statistics}*Q')


def print_assumptions(archs: Sequence[int], dtypes: Sequence[str]) -> None:
    print(f'Cost model of the fused kernels in {triton_kernels.__file__} '
          f'(Triton {triton.__version__}, SASS from '
          f'{find_cuobjdump() or "nowhere: no cuobjdump ships with Triton"})')
    print('Assumptions:')
    for arch in archs:
        gpu = GPUS[arch]
        achievable = '' if gpu.achievable_bytes_per_s is None else (
            f' (about {gpu.achievable_bytes_per_s / 1e12:.1f} TB/s '
            f'achievable)')
        print(f'- sm_{arch}: {gpu.name}, {gpu.sms} SMs at '
              f'{gpu.clock_hz / 1e9:.3f} GHz (boost); issue '
              f'{SCHEDULERS_PER_SM} schedulers x 32 lanes per SM per clock '
              f'= {issue_rate(gpu) / 1e12:.2f} T thread-instructions/s; '
              f'MUFU {MUFU_PER_CLOCK} per SM per clock = '
              f'{mufu_rate(gpu) / 1e12:.2f} T/s; HBM '
              f'{gpu.hbm_bytes_per_s / 1e12:.3g} TB/s peak{achievable}; per '
              f'SM {REGISTERS_PER_SM} registers (per warp in units of '
              f'{REGISTER_UNIT}, warps in units of {WARP_ALLOCATION_UNIT}, '
              f'at most {MAX_REGISTERS_PER_THREAD} a thread), '
              f'{gpu.shared_per_sm // 1024} KiB shared memory (units of '
              f'{SHARED_UNIT} B, {SHARED_RESERVED_PER_BLOCK} B reserved per '
              f'block, at most {SHARED_MEMORY_LIMITS[arch]} B a block), at '
              f'most {MAX_BLOCKS_PER_SM} blocks and {MAX_WARPS_PER_SM} warps.')
    print('- Instructions: per program (total - loop) + loop * loop_trips '
          '(static SASS counts, NOPs left out; the hot loop: from a '
          'backward branch to its target, the largest where there are '
          'several; none: unrolled, all in the total), each issued by '
          '32 * num_warps threads; likewise the MUFU instructions. Useful '
          'logits: queries * kernel_size^2 of the op (the figures of the '
          'slot dK/dV of interior and of edge tiles add up).')
    print('- Time: max(issue, MUFU, DRAM); no latency, waves or occupancy '
          'effect. DRAM = roofline = compulsory bytes / peak bandwidth.')
    print(f'- Compulsory bytes, each tensor moved once: D head dim, '
          f'Q = B*heads*ceil(H/s)*ceil(W/s) queries, P = B*heads*H*W input '
          f'pixels, {STATISTIC_BYTES}-byte (float32) statistics:')
    for title, table in (('kernel', KERNEL_TRAFFIC), ('op', OP_TRAFFIC)):
        for name, traffic in table.items():
            formulas = ', '.join(f'{dtype} ' + traffic_formula(traffic, dtype)
                                 for dtype in dtypes)
            print(f'    {title} {name}: {formulas}; {traffic.tensors}')


def print_op_roofline(archs: Sequence[int], shapes: Sequence[OpShape],
                      dtypes: Sequence[str]) -> None:
    print('\nRoofline of the op (us at peak bandwidth): forward, '
          'forward+backward')
    print(f'{"shape":<16}{"dtype":<10}' +
          ''.join(f'{f"sm_{arch} fwd":>12}{f"sm_{arch} fwd+bwd":>16}'
                  for arch in archs))
    for shape, dtype in itertools.product(shapes, dtypes):
        forward, backward = (
            compulsory_bytes(OP_TRAFFIC[name], shape, dtype)
            for name in ('forward', 'backward'))
        print(f'{shape.name:<16}{dtype:<10}' + ''.join(
            f'{forward / GPUS[arch].hbm_bytes_per_s * 1e6:>12.1f}'
            f'{(forward + backward) / GPUS[arch].hbm_bytes_per_s * 1e6:>16.1f}'
            for arch in archs))


# The table's columns after the variant: header, record field, width,
# format spec.
TABLE_COLUMNS = (
    ('loop', 'loop_instructions', 6, ''),
    ('total', 'total_instructions', 6, ''),
    ('trips', 'loop_trips', 6, ''),
    ('instr/logit', 'instructions_per_useful_logit', 12, '.0f'),
    ('regs', 'registers', 5, ''),
    ('spill', 'spill_bytes', 6, ''),
    ('smem B', 'shared_bytes', 7, ''),
    ('occ', 'occupancy', 5, '.2f'),
    ('model us', 'modelled_us', 9, '.1f'),
    ('roof us', 'roofline_us', 8, '.1f'),
    ('x roof', 'modelled_over_roofline', 7, '.1f'),
    ('bound', 'bound', 6, ''),
    ('meas us', 'measured_us', 8, '.1f'),
    ('meas/model', 'measured_over_modelled', 11, '.2f'),
)
TABLE_HEADER = (f'{"kernel":<25}{"dtype":<6}{"D":>4}{"s":>2}{"W,S":>5} '
                f'{"shape":<15}' +
                ''.join(f'{header:>{width}}'
                        for header, _, width, _ in TABLE_COLUMNS))


def format_record(record: dict) -> str:
    """One row of the table."""
    head = (f'{record["kernel"]:<25}{DTYPE_NAMES[record["dtype"]]:<6}'
            f'{record["head_dim"]:>4}{record["stride"]:>2}'
            f'{record["num_warps"]:>3},{record["num_stages"]} '
            f'{dash_if_none(record["shape"]):<15}')
    if record['error']:
        return f'{head}FAILED: {record["error"]}'
    flag = '  DOES NOT FIT' if record['fits'] is False else ''
    return head + ''.join(f'{dash_if_none(record[field], spec):>{width}}'
                          for _, field, width, spec in TABLE_COLUMNS) + flag


def main() -> None:
    args = parse_args()
    shapes = select_shapes(args.shapes)
    compile_fn = triton_compiler()
    tasks = [
        (arch,
         Variant(kernel, dtype, head_dim, args.kernel_size, stride,
                 args.small_map, num_warps, num_stages))
        for arch, kernel, dtype, head_dim, stride in itertools.product(
            args.arch, args.kernels, args.dtypes, args.head_dims, args.strides)
        for num_warps, num_stages in (
            args.tuning_configs
            or KERNELS[kernel].configs(head_dim, stride, args.small_map))
    ]
    variants = analyse_variants(compile_fn, tasks, args.jobs)
    records = [
        shape_record(record, shape)
        for (_, variant), record in zip(tasks, variants)
        for shape in matching_shapes(variant, shapes) or [None]
    ]
    print_assumptions(args.arch, args.dtypes)
    if args.measured:
        device, times = load_measured(args.measured)
        arch = measured_arch(device)
        if arch is None:
            print(f'\nMeasured times: {device} is none of the modelled GPUs '
                  f'({", ".join(gpu.name for gpu in GPUS.values())}); not '
                  f'compared')
        else:
            matched = attach_measured(records, arch, times)
            print(f'\nMeasured times: {args.measured} ({device}, sm_{arch}):'
                  f' {matched} of {len(times)} kernel times beside a '
                  f'modelled variant (same kernel, shape, dtype, tuning '
                  f'config)')
    print_op_roofline(args.arch, shapes, args.dtypes)
    for arch in args.arch:
        print(f'\nsm_{arch} ({GPUS[arch].name}): loop, total: static '
              f'instructions; occ: resident warps / {MAX_WARPS_PER_SM}; '
              f'x roof: modelled / roofline; meas/model: measured / '
              f'modelled')
        print(TABLE_HEADER)
        for record in records:
            if record['arch'] == arch:
                print(format_record(record))
    failed = [record for record in variants if record['error']]
    print(f'\n{len(variants)} variants, {len(records)} records: '
          f'{len(failed)} failed to compile, '
          f'{sum(record["fits"] is False for record in variants)} do not '
          f'fit on an SM')
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(records, file, indent=1)
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
