"""The fused kernels compile with Triton's ahead-of-time compiler, which
needs no GPU: for the H100 (sm_90) with the installed Triton (every tuning
config, the widest head dim, both strides, the tiny-map variant and
bfloat16, which the interpreter cannot run), and for the A100 (sm_80) and
the H100 with Triton 2.1, the oldest Triton the kernels support."""
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools/analysis_tools/compile_kernels.py'
OLDEST_TRITON = '2.1.0'
# pip's words for an index it cannot reach.
UNREACHABLE_INDEX = re.compile(
    r'NewConnectionError|ConnectTimeout|ReadTimeout|Connection refused|'
    r'Name or service not known|Temporary failure in name resolution|'
    r'Network is unreachable|ProxyError|SSLError')


def installed_triton_has_nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:  # no Triton, or a Triton 2.x
        return False
    return 'nvidia' in backends


needs_nvidia_triton = pytest.mark.skipif(
    not installed_triton_has_nvidia_backend(),
    reason='the installed Triton has no NVIDIA backend')


def tool_command(report: Path, *args: str) -> List[str]:
    return [sys.executable, str(TOOL), '--json', str(report), *args]


def check_run(result: subprocess.CompletedProcess, report: Path) -> dict:
    assert result.returncode == 0, result.stdout[-3000:] + \
        result.stderr[-3000:]
    return json.loads(report.read_text())


def compile_kernels(tmp_path: Path, *args: str) -> dict:
    report = tmp_path / 'report.json'
    result = subprocess.run(
        tool_command(report, '--arch', '90', *args),
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=900)
    return check_run(result, report)


@needs_nvidia_triton
@pytest.mark.parametrize('dtype,head_dims', [('bfloat16', (64, 128)),
                                             ('float32', (128, ))])
@pytest.mark.slow
def test_widest_head_dims_compile_for_sm90(tmp_path, dtype, head_dims):
    """The head dims with the most registers compile; in bf16 none
    spills."""
    report = compile_kernels(tmp_path, '--dtypes', dtype, '--head-dims',
                             *map(str, head_dims), '--strides', '1', '2',
                             '--small-maps', '0')
    variants = report['variants']
    kernels = pytest.importorskip('acmix_mm.ops.triton_kernels').KERNELS
    assert len(variants) == sum(
        len(spec.configs(head_dim, stride, False))
        for spec in kernels.values() for head_dim in head_dims
        for stride in (1, 2))
    assert {row['kernel'] for row in variants} == set(kernels)
    for row in variants:
        assert row['error'] is None
        assert 0 < row['shared_bytes'] <= report['shared_limit']
        assert row['tensor_cores'], row
    if dtype == 'bfloat16':
        spilling = {(row['kernel'], row['head_dim'], row['stride'])
                    for row in variants if row['stack_bytes']}
        assert not spilling


@needs_nvidia_triton
@pytest.mark.slow
def test_small_map_variant_compiles_for_sm90(tmp_path):
    report = compile_kernels(tmp_path, '--dtypes', 'float16', '--head-dims',
                             '8', '--kernel-sizes', '3', '--strides', '1',
                             '--small-maps', '1')
    kernels = pytest.importorskip('acmix_mm.ops.triton_kernels').KERNELS
    assert len(report['variants']) == sum(
        len(spec.configs(8, 1, True)) for spec in kernels.values())
    assert all(row['error'] is None and row['tensor_cores']
               for row in report['variants'])


@needs_nvidia_triton
@pytest.mark.slow
def test_small_map_region_gradients_tune_over_configs_that_do_not_spill(
        tmp_path):
    """On maps smaller than the window the region dK/dV at 32 channels
    spills with 4 warps: its variant for them tunes over 8 only."""
    kernels = pytest.importorskip('acmix_mm.ops.triton_kernels').KERNELS
    configs = kernels['grad_key_value'].configs(32, 1, True)
    assert {warps for warps, _ in configs} == {8}
    assert {
        warps
        for warps, _ in kernels['grad_key_value'].configs(32, 1, False)
    } == {4, 8}
    report = compile_kernels(tmp_path, '--dtypes', 'bfloat16', '--head-dims',
                             '32', '--strides', '1', '--small-maps', '1',
                             '--kernels', 'grad_key_value')
    assert [(row['num_warps'], row['num_stages'])
            for row in report['variants']] == list(configs)
    assert not [row for row in report['variants'] if row['stack_bytes']]


@needs_nvidia_triton
@pytest.mark.slow
def test_stride_two_slot_forward_tunes_over_configs_that_do_not_spill(
        tmp_path):
    """At stride 2 and 32 channels the slot forward spills with 1 warp: its
    variant for stride 2 tunes over 2 only."""
    slot_forward = pytest.importorskip(
        'acmix_mm.ops.triton_kernels').KERNELS['slot_forward']
    configs = slot_forward.configs(32, 2, False)
    assert {warps for warps, _ in configs} == {2}
    assert {warps for warps, _ in slot_forward.configs(32, 1, False)} == {1, 2}
    report = compile_kernels(tmp_path, '--dtypes', 'bfloat16', 'float16',
                             '--head-dims', '32', '--strides', '2',
                             '--small-maps', '0', '1', '--kernels',
                             'slot_forward')
    assert [(row['num_warps'], row['num_stages'])
            for row in report['variants']] == 4 * list(configs)
    assert not [row for row in report['variants'] if row['stack_bytes']]


@needs_nvidia_triton
def test_unsupported_head_dim_is_named(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TOOL), '--head-dims', '12'],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode != 0
    assert 'got 12' in result.stderr


@pytest.mark.skipif(
    not (sys.platform == 'linux' and platform.machine() == 'x86_64'
         and sys.version_info < (3, 12)),
    reason=f'Triton {OLDEST_TRITON} has wheels for x86-64 Linux and '
    f'CPython <= 3.11 only')
@pytest.mark.slow
def test_oldest_triton_compiles_for_sm80_and_sm90(tmp_path):
    """Triton 2.1's keyword compile API: pip-installs it beside the project
    and compiles a subset for both architectures at once (2 processes)."""
    triton_dir = tmp_path / 'triton'
    pip = subprocess.run([
        sys.executable, '-m', 'pip', 'install', '--no-deps', '--quiet',
        '--disable-pip-version-check', '--retries', '1', '--timeout', '30',
        '--target',
        str(triton_dir), f'triton=={OLDEST_TRITON}'
    ],
                         capture_output=True,
                         text=True,
                         timeout=600)
    if pip.returncode and UNREACHABLE_INDEX.search(pip.stdout + pip.stderr):
        pytest.skip(f'pip cannot reach the package index to install '
                    f'triton=={OLDEST_TRITON}')
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(triton_dir),
                                    str(REPO)]),
        TRITON_CACHE_DIR=str(tmp_path / 'cache'))
    runs = {}
    for arch in ('80', '90'):
        report_path = tmp_path / f'sm{arch}.json'
        runs[report_path] = subprocess.Popen(
            tool_command(report_path, '--arch', arch, '--dtypes', 'float16',
                         'float32', '--head-dims', '32', '--strides', '1', '2',
                         '--small-maps', '0', '--tuning-configs', '4,2'),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env)
    results = {}
    for report_path, run in runs.items():
        stdout, stderr = run.communicate(timeout=600)
        results[report_path] = subprocess.CompletedProcess(
            run.args, run.returncode, stdout, stderr)
    for report_path, result in results.items():
        report = check_run(result, report_path)
        assert report['triton'] == OLDEST_TRITON
        variants = report['variants']
        # Triton 2 compiles the region design only.
        region = pytest.importorskip(
            'acmix_mm.ops.triton_kernels').KERNEL_DESIGNS['region'].names()
        assert {row['kernel'] for row in variants} == set(region)
        assert len(variants) == len(region) * 2 * 2  # x dtypes x strides
        for row in variants:
            assert row['error'] is None, row
            assert 0 < row['shared_bytes'] <= report['shared_limit'], row
            # 16-bit dots on tensor cores; float32 dots exact (no TF32), on
            # the FMA units: Triton 2 has no 'tf32x3'.
            assert row['tensor_cores'] == (row['dtype'] == 'float16'), row
