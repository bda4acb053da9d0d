"""tools/analysis_tools/kernel_cost.py: its SASS loop finder, occupancy and
time model on known cases, measured times from a benchmark JSON, and one
run that compiles a variant for the H100 (sm_90)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

# Imported first, as the other tests import it (interpreted on the CPU):
# the tool's import selects compiled kernels only for modules not yet
# imported.
import acmix_mm.ops.triton_kernels  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools/analysis_tools'
TOOL = TOOLS / 'kernel_cost.py'
MEASURED = REPO / 'tests/fixtures/kernel_cost_measured.json'

# A loop of 12 instructions (0x0040-0x00f0, the NOP left out) with a spin
# loop of 2 inside, then the epilogue and the padding after EXIT.
SASS = """
\tcode for sm_90a
\t\tFunction : _toy_kernel
        /*0000*/                   LDC R1, c[0x0][0x28] ; /* 0x00000a00ff0 */
                                                          /* 0x000ff000000 */
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   IMAD.MOV.U32 R2, RZ, RZ, 0x4 ;
        /*0030*/                   MUFU.RCP R3, R2 ;
        /*0040*/                   LDG.E.128 R4, desc[UR4][R8.64] ;
        /*0050*/                   STS.128 [R0], R4 ;
        /*0060*/                   SYNCS.PHASECHK.TRANS64 P0, [UR4], R2 ;
        /*0070*/               @!P0 BRA 0x60 ;
        /*0080*/                   LDSM.16.M88.4 R12, [R0] ;
        /*0090*/                   HMMA.16816.F32.BF16 R16, R12, R14, R16 ;
        /*00a0*/                   NOP ;
        /*00b0*/                   MUFU.EX2 R20, R16 ;
        /*00c0*/                   FFMA R21, R20, R3, RZ ;
        /*00d0*/                   SHFL.BFLY PT, R22, R21, 0x1, 0x1f ;
        /*00e0*/                   IADD3 R0, R0, 0x40, RZ ;
        /*00f0*/               @!P1 BRA 0x40 ;
        /*0100*/                   F2FP.BF16.F32.PACK_AB R23, R21, R21 ;
        /*0110*/                   STG.E desc[UR4][R8.64], R23 ;
        /*0120*/                   EXIT ;
        /*0130*/                   BRA 0x130;
        /*0140*/                   NOP;
\t\t..........
"""


def installed_triton_ships_cuobjdump() -> bool:
    try:
        from triton.backends import backends
    except ImportError:  # no Triton, or a Triton 2.x
        return False
    root = Path(importlib.util.find_spec('triton').origin).parent
    return ('nvidia' in backends
            and (root / 'backends/nvidia/bin/cuobjdump').is_file())


@pytest.fixture(scope='module')
def kernel_cost() -> ModuleType:
    """The tool as a module; the environment as it was (importing it
    drops TRITON_INTERPRET)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv('TRITON_INTERPRET', raising=False)
        patch.syspath_prepend(str(TOOLS))
        spec = importlib.util.spec_from_file_location('kernel_cost', TOOL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_sass_hot_loop_is_the_largest_loop(kernel_cost):
    profile = kernel_cost.profile_sass(SASS)
    assert profile.total_instructions == 18  # 2 NOPs and the padding out
    assert profile.backward_branches == 2
    assert profile.loop_instructions == 11
    assert profile.loop_classes == dict(
        tensor_core=1,
        mufu=1,
        global_memory=1,
        shared_memory=2,
        local_memory=0,
        shuffle=1,
        integer_alu=1,
        float_alu=1,
        conversion=0,
        other=3)  # SYNCS and both branches
    assert profile.total_classes['mufu'] == 2
    assert profile.total_classes['global_memory'] == 2


def test_sass_without_loop(kernel_cost):
    straight = '\n'.join(line for line in SASS.splitlines()
                         if 'BRA 0x' not in line or 'BRA 0x130' in line)
    profile = kernel_cost.profile_sass(straight)
    assert profile == (16, 0, 0, profile.total_classes,
                       dict.fromkeys(kernel_cost.INSTRUCTION_CLASS_NAMES, 0))


@pytest.mark.parametrize(
    'arch, registers, num_warps, shared_bytes, expected',
    [
        # 127 registers: 4096 per warp, 16 warps.
        (90, 127, 4, 6144, (4, 16, 0.25, 'registers')),
        (90, 24, 4, 0, (16, 64, 1.0, 'warps')),
        # 40 registers, 1 warp: 51 warps by registers, 48 in units of 4.
        (90, 40, 1, 0, (32, 32, 0.5, 'blocks')),
        # 255 registers: 8192 per warp, 8 warps.
        (90, 255, 8, 0, (1, 8, 0.125, 'registers')),
        # 100 KiB + 1 KiB reserved: 2 blocks in 228 KiB, 1 in 164 KiB.
        (90, 64, 4, 100 * 1024, (2, 8, 0.125, 'shared')),
        (80, 64, 4, 100 * 1024, (1, 4, 0.0625, 'shared')),
        (90, 64, 4, 228 * 1024, (0, 0, 0.0, 'shared')),
    ])
def test_occupancy(kernel_cost, arch, registers, num_warps, shared_bytes,
                   expected):
    fit = kernel_cost.occupancy(kernel_cost.GPUS[arch], registers, num_warps,
                                shared_bytes,
                                kernel_cost.SHARED_MEMORY_LIMITS[arch])
    assert fit == expected


def test_compulsory_bytes(kernel_cost):
    shapes = {shape.name: shape for shape in kernel_cost.BENCHMARK_SHAPES}
    traffic = kernel_cost.KERNEL_TRAFFIC
    # coco/stage1: 2 x 4 heads x 16 channels x 200 x 334, stride 1.
    pixels = 2 * 4 * 200 * 334
    stage1 = shapes['coco/stage1']
    assert kernel_cost.compulsory_bytes(
        traffic['forward'], stage1,
        'bfloat16') == 2 * 16 * 4 * pixels + 4 * pixels
    assert kernel_cost.compulsory_bytes(
        traffic['grad_query'], stage1,
        'float32') == 4 * 16 * 6 * pixels + 8 * pixels
    # coco/stage2.0: 32 channels, a query every other pixel each way.
    queries = 2 * 4 * 100 * 167
    assert kernel_cost.compulsory_bytes(
        traffic['grad_key_value'], shapes['coco/stage2.0'],
        'float16') == 2 * 32 * (2 * queries + 4 * pixels) + 8 * queries


@pytest.mark.parametrize(
    'instructions, mufu, traffic_bytes, expected_us, bound', [
        (2.965248e9, 1.85328e8, 1.675e8, 100.0, 'issue'),
        (2.965248e9, 1.85328e8, 6.7e8, 200.0, 'dram'),
        (2.965248e9, 1.111968e9, 6.7e8, 300.0, 'mufu'),
        (2.965248e9, 0, None, 100.0, 'issue'),
    ])
def test_model_time_on_h100(kernel_cost, instructions, mufu, traffic_bytes,
                            expected_us, bound):
    """H100: 29.65e12 thread-instructions/s, 3.71e12 MUFU results/s,
    3.35e12 B/s."""
    time = kernel_cost.model_time(kernel_cost.GPUS[90], instructions, mufu,
                                  traffic_bytes)
    assert time.issue_us == pytest.approx(100.0)
    assert time.mufu_us == pytest.approx(mufu / 3.70656e12 * 1e6)
    assert time.modelled_us == pytest.approx(expected_us)
    assert time.bound == bound
    if traffic_bytes is None:
        assert time.dram_us is None


def test_matching_shapes(kernel_cost):

    def names(head_dim: int,
              stride: int,
              kernel_size: int = 7,
              kernel: str = 'forward') -> list:
        variant = kernel_cost.Variant(kernel, 'bfloat16', head_dim,
                                      kernel_size, stride, False, 4, 1)
        return [
            shape.name for shape in kernel_cost.matching_shapes(
                variant, kernel_cost.BENCHMARK_SHAPES)
        ]

    assert names(32, 2) == ['coco/stage2.0', 'in224/stage2.0']
    assert names(32, 1) == ['coco/stage2', 'in224/stage2']
    assert names(16, 2) == []
    assert names(16, 1, kernel_size=5) == []
    # A 7 x 7 map (in224/stage4) has edge key tiles only: the slot dK/dV
    # of interior tiles is not launched there (it had a zero roofline).
    assert names(128, 1) == ['coco/stage4', 'in224/stage4']
    assert names(128, 1, kernel='slot_grad_key_value') == ['coco/stage4']
    assert names(128, 1, kernel='slot_grad_key_value_edge') == \
        ['coco/stage4', 'in224/stage4']


def toy_record(kernel, num_warps, loop_instructions, loop_mufu):
    """A compiled variant's record (bf16, head dim 16, stride 1, sm_90) of
    2000 instructions, 40 of them MUFU."""
    return dict(
        kernel=kernel,
        arch=90,
        dtype='bfloat16',
        head_dim=16,
        stride=1,
        kernel_size=7,
        num_warps=num_warps,
        error=None,
        total_instructions=2000,
        loop_instructions=loop_instructions,
        total_classes=dict(mufu=40),
        loop_classes=dict(mufu=loop_mufu))


def coco_stage1(kernel_cost):
    return next(shape for shape in kernel_cost.BENCHMARK_SHAPES
                if shape.name == 'coco/stage1')


def test_shape_record_scales_the_loop_by_its_trips(kernel_cost):
    record = toy_record('forward', 4, 1500, 32)
    result = kernel_cost.shape_record(record, coco_stage1(kernel_cost))
    trips = result['loop_trips']
    per_program = 500 + 1500 * trips
    assert trips >= 1
    assert result['thread_instructions'] == \
        result['programs'] * 128 * per_program
    assert result['instructions_per_useful_logit'] == pytest.approx(
        result['thread_instructions'] / (2 * 4 * 200 * 334 * 49))
    assert result['roofline_us'] == pytest.approx(
        (2 * 16 * 4 + 4) * 2 * 4 * 200 * 334 / 3.35e12 * 1e6)
    assert result['modelled_us'] == pytest.approx(
        max(result['issue_us'], result['mufu_us'], result['roofline_us']))
    assert result['mufu_us'] == pytest.approx(
        result['programs'] * 128 * (8 + 32 * trips) / 3.70656e12 * 1e6)
    assert result['measured_us'] is None
    unmatched = kernel_cost.shape_record(record, None)
    assert unmatched['shape'] is None and unmatched['modelled_us'] is None


def test_split_key_value_kernels_share_the_part(kernel_cost):
    """The slot dK/dV of interior and of edge tiles: their programs cover
    the key tiles once, their rooflines add up to the part's."""
    shape = coco_stage1(kernel_cost)
    interior, edge = (
        kernel_cost.shape_record(toy_record(name, 1, 0, 0), shape)
        for name in ('slot_grad_key_value', 'slot_grad_key_value_edge'))
    # 200 x 334 keys in 4 x 8 tiles: 50 x 42, of which the first and last
    # row and column are edge tiles; 2 batches x 4 heads.
    assert (interior['programs'], edge['programs']) == (48 * 40 * 8, 180 * 8)
    whole = kernel_cost.compulsory_bytes(
        kernel_cost.PART_TRAFFIC['grad_key_value'], shape, 'bfloat16')
    assert interior['compulsory_bytes'] + edge['compulsory_bytes'] == \
        pytest.approx(whole)
    assert edge['instructions_per_useful_logit'] == pytest.approx(
        180 * 8 * 32 * 2000 / (2 * 4 * 200 * 334 * 49))


def test_measured_times_from_a_benchmark(kernel_cost):
    device, times = kernel_cost.load_measured(str(MEASURED))
    assert kernel_cost.measured_arch(device) == 90
    # The triton rows of coco/stage1 and coco/stage2.0, not the others.
    assert len(times) == 6
    assert times[('forward', 'coco/stage1', 'bfloat16', 4, 2)] == \
        pytest.approx(318.7442)
    records = [
        dict(
            kernel='forward',
            arch=arch,
            shape='coco/stage1',
            dtype='bfloat16',
            num_warps=4,
            num_stages=stages,
            modelled_us=250.0,
            measured_us=None,
            measured_over_modelled=None) for arch in (80, 90)
        for stages in (1, 2)
    ]
    assert kernel_cost.attach_measured(records, 90, times) == 1
    matched, = [record for record in records if record['measured_us']]
    assert (matched['arch'], matched['num_stages']) == (90, 2)
    assert matched['measured_over_modelled'] == pytest.approx(318.7442 / 250.0)


def run_tool(*args: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args],
                          capture_output=True,
                          text=True,
                          env=dict(
                              os.environ, PYTHONPATH=str(REPO), **environment),
                          timeout=600)


def output_tail(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def test_help_documents_the_options():
    result = run_tool('--help')
    assert result.returncode == 0, result.stderr
    for option in ('--arch', '--dtypes', '--head-dims', '--strides',
                   '--kernels', '--tuning-configs', '--shapes', '--jobs',
                   '--json', '--measured'):
        assert option in result.stdout


def test_unsupported_head_dim_is_named():
    result = run_tool('--head-dims', '12')
    assert result.returncode == 2
    assert 'got 12' in result.stderr


def test_a_variant_that_fails_to_compile_exits_1(kernel_cost, tmp_path):
    """A Triton cache directory that cannot be made fails the compile."""
    report = tmp_path / 'cost.json'
    config = '{},{}'.format(
        *kernel_cost.KERNELS['forward'].tuning_configs(16)[0])
    variant = '--kernels forward --dtypes float16 --head-dims 16 --strides 1'
    result = run_tool(
        *variant.split(),
        '--tuning-configs',
        config,
        '--json',
        str(report),
        TRITON_CACHE_DIR=os.devnull + '/cache')
    assert result.returncode == 1, output_tail(result)
    assert 'FAILED' in result.stdout and '1 failed' in result.stdout
    record, = json.loads(report.read_text())
    assert record['error'] and record['modelled_us'] is None


@pytest.mark.skipif(
    not installed_triton_ships_cuobjdump(),
    reason='the installed Triton has no NVIDIA backend or no cuobjdump')
@pytest.mark.slow
def test_one_variant_end_to_end(kernel_cost, tmp_path):
    """forward, bfloat16, head dim 16, strides 1 (coco/stage1) and 2 (no
    coco shape), the first tuning config, for sm_90."""
    num_warps, num_stages = kernel_cost.KERNELS['forward'].tuning_configs(
        16)[0]
    report = tmp_path / 'cost.json'
    result = run_tool('--kernels', 'forward', '--dtypes', 'bfloat16',
                      '--head-dims', '16', '--strides', '1', '2',
                      '--tuning-configs', f'{num_warps},{num_stages}',
                      '--arch', '90', '--json', str(report), '--measured',
                      str(MEASURED))
    assert result.returncode == 0, output_tail(result)
    assert 'H100 SXM' in result.stdout and '3.35 TB/s' in result.stdout
    records = {
        record['stride']: record
        for record in json.loads(report.read_text())
    }
    assert len(records) == 2
    record = records[1]
    assert record['shape'] == 'coco/stage1'
    assert (record['kernel'], record['arch'], record['num_warps'],
            record['num_stages']) == ('forward', 90, num_warps, num_stages)
    assert 0 < record['loop_instructions'] < record['total_instructions']
    assert record['loop_trips'] >= 1 and record['programs'] > 0
    assert record['instructions_per_useful_logit'] > 0
    assert record['loop_classes']['tensor_core'] > 0
    assert record['loop_classes']['mufu'] > 0
    assert 0 < record['registers'] <= 255
    assert record['spill_bytes'] >= 0 and record['shared_bytes'] > 0
    assert 0 < record['occupancy'] <= 1
    assert record['modelled_us'] >= record['roofline_us'] > 0
    assert record['bound'] in ('issue', 'mufu', 'dram')
    # The benchmark ran forward at coco/stage1 with 4 warps, 2 stages.
    assert (record['measured_us']
            is not None) == ((num_warps, num_stages) == (4, 2))
    unmatched = records[2]
    assert unmatched['shape'] is None
    assert unmatched['loop_instructions'] > 0
    assert unmatched['modelled_us'] is None
