"""The fused kernels compile for the H100 (sm_90) with Triton's
ahead-of-time compiler, which needs no GPU: every tuning config, the widest
head dim, both strides, the tiny-map variant and bfloat16, which the
interpreter cannot run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip('triton')
from triton.backends import backends  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools/analysis_tools/compile_kernels.py'

pytestmark = pytest.mark.skipif('nvidia' not in backends,
                                reason="Triton has no NVIDIA backend")


def compile_kernels(tmp_path: Path, *args: str) -> dict:
    report = tmp_path / 'report.json'
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, str(TOOL), '--arch', '90', '--json', str(report),
         *args], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + \
        result.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
def test_widest_head_dim_compiles_for_sm90(tmp_path, dtype):
    report = compile_kernels(tmp_path, '--dtypes', dtype, '--head-dims',
                             '128', '--strides', '1', '2', '--small-maps',
                             '0')
    variants = report['variants']
    assert len(variants) == 3 * 2 * 4  # kernels x strides x tuning configs
    assert {row['kernel'] for row in variants} == {
        'forward', 'grad_query', 'grad_key_value'}
    for row in variants:
        assert row['error'] is None
        assert 0 < row['shared_bytes'] <= report['shared_limit']
        assert row['tensor_cores'], row


def test_small_map_variant_compiles_for_sm90(tmp_path):
    report = compile_kernels(tmp_path, '--dtypes', 'float16', '--head-dims',
                             '8', '--kernel-sizes', '3', '--strides', '1',
                             '--small-maps', '1')
    assert len(report['variants']) == 3 * 4
    assert all(row['error'] is None and row['tensor_cores']
               for row in report['variants'])


def test_unsupported_head_dim_is_named(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TOOL), '--head-dims', '12'],
        capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode != 0
    assert 'got 12' in result.stderr
