"""tools/analysis_tools/benchmark_acmix.py as a user runs it (``--quick``):
one row per (implementation, shape), each checked against the float32
reference, errors recorded in their rows, and the filters."""
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'tools/analysis_tools/benchmark_acmix.py'
# float32 on the CPU: the reference is the truth itself, the others differ
# by summation order.
TOLERANCE = 1e-4


def load_script() -> ModuleType:
    """The benchmark script as a module (its import runs no benchmark)."""
    spec = importlib.util.spec_from_file_location('benchmark_acmix', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark(out_dir: Path, *args: str, cpu: bool = True) -> dict:
    """Run the script with ``--quick`` into ``out_dir``; its JSON result."""
    env = dict(os.environ)
    # conftest selects Triton's interpreter without a GPU; the benchmark
    # must see plain CPU tensors (the triton rows then record their error).
    env.pop('TRITON_INTERPRET', None)
    if cpu:
        # One thread: the shapes are tiny and CI's few cores are shared.
        env.update(CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    result = subprocess.run([
        sys.executable,
        str(SCRIPT), '--quick', '--out-dir',
        str(out_dir), *args
    ],
                            capture_output=True,
                            text=True,
                            env=env,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + \
        result.stderr[-3000:]
    return json.loads((out_dir / 'benchmark_acmix.json').read_text())


def rows_by_key(rows: list) -> dict:
    """{(impl, shape): row}, asserting the keys are unique."""
    keyed = {(row['impl'], row['shape']): row for row in rows}
    assert len(keyed) == len(rows)
    return keyed


def assert_ran(row: dict, tolerance: float) -> None:
    """The row has no error, finite times and errors within tolerance."""
    assert 'error' not in row, row
    for key in ('forward_ms', 'forward_backward_ms', 'forward_gbps'):
        assert math.isfinite(row[key]) and row[key] > 0, row
    assert row['max_error'] < tolerance, row
    assert row['max_grad_error'] < tolerance, row


@pytest.mark.slow
def test_quick_op_section_on_cpu(tmp_path):
    script = load_script()
    result = run_benchmark(tmp_path, '--sections', 'op')
    assert (result['device'], result['dtype']) == ('cpu', 'float32')
    assert result['torch'] == torch.__version__
    assert result['backbone'] == result['mask_rcnn'] == []
    shapes = [shape.name for shape in script.QUICK_SHAPES]
    rows = rows_by_key(result['op'])
    assert set(rows) == set(itertools.product(script.IMPLS, shapes))

    for shape in shapes:
        assert_ran(rows['reference', shape], TOLERANCE)
        # The Triton kernels need CUDA tensors: recorded, not raised.
        fused = rows['triton', shape]
        assert 'CUDA' in fused['error'] and 'forward_ms' not in fused
        # FlexAttention runs uncompiled on the CPU, forward only (no CPU
        # backward in torch): whatever it computed must be right.
        flex = rows['flex', shape]
        assert flex['compiled'] is False
        if 'max_error' in flex:
            assert flex['max_error'] < TOLERANCE, flex
            assert math.isfinite(flex['forward_ms']), flex
    assert_ran(rows['unfold', 'quick/s1'], TOLERANCE)
    assert_ran(rows['unfold', 'quick/s2'], TOLERANCE)  # stride 2, odd width
    # 3 x 5 map, pad 3: reflection padding is undefined for unfold only.
    assert 'max_error' not in rows['unfold', 'quick/tiny']
    assert rows['unfold', 'quick/tiny']['error'].startswith('RuntimeError')

    tables = (tmp_path / 'benchmark_acmix.md').read_text()
    assert '| quick/tiny | unfold |' in tables
    if importlib.util.find_spec('matplotlib'):
        assert (tmp_path / 'benchmark_acmix.png').stat().st_size > 0


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (tiny shapes, shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_impls_and_shapes_filters(tmp_path, one_thread):
    load_script().main([
        '--quick', '--sections', 'op', '--impls', 'reference', 'unfold',
        '--shapes', 'quick/s2', '--repeats', '1', '--dtype', 'float32',
        '--out-dir',
        str(tmp_path)
    ])
    result = json.loads((tmp_path / 'benchmark_acmix.json').read_text())
    rows = rows_by_key(result['op'])
    assert set(rows) == {('reference', 'quick/s2'), ('unfold', 'quick/s2')}
    for row in rows.values():
        assert_ran(row, TOLERANCE)


@pytest.mark.slow
def test_merge_keeps_the_sections_not_run(tmp_path, one_thread):
    script = load_script()
    args = [
        '--quick', '--sections', 'op', '--impls', 'reference', '--shapes',
        'quick/s1', '--repeats', '1', '--dtype', 'float32', '--out-dir',
        str(tmp_path)
    ]
    script.main(args)
    path = tmp_path / 'benchmark_acmix.json'
    earlier = json.loads(path.read_text())
    backbone_row = dict(
        model='ResNet-50 (mmdet)',
        input='2x3x64x96',
        images_per_s=1.0,
        step_ms=2000.0,
        peak_mib=None)
    earlier['backbone'] = [backbone_row]
    path.write_text(json.dumps(earlier))

    script.main(args + ['--merge'])
    merged = json.loads(path.read_text())
    assert merged['backbone'] == [backbone_row]
    assert [row['shape'] for row in merged['op']] == ['quick/s1']
    assert '| ResNet-50 (mmdet) | 2x3x64x96 |' in \
        (tmp_path / 'benchmark_acmix.md').read_text()

    script.main(args)  # without --merge: only this run's sections
    assert json.loads(path.read_text())['backbone'] == []

    earlier['dtype'] = 'bfloat16'
    path.write_text(json.dumps(earlier))
    with pytest.raises(SystemExit, match='dtype'):
        script.main(args + ['--merge'])


def test_shape_names_and_prefixes():
    script = load_script()
    shapes = script.IMAGENET_SHAPES + script.COCO_SHAPES
    assert script.select_shapes(shapes, None) == shapes
    assert script.select_shapes(shapes, ['coco']) == script.COCO_SHAPES
    assert [
        s.name for s in script.select_shapes(shapes,
                                             ['in224/stage4', 'coco/stage2.0'])
    ] == ['in224/stage4', 'coco/stage2.0']
    for unknown in ('coc', 'coco/stage', 'quick'):
        with pytest.raises(SystemExit, match=unknown):
            script.select_shapes(shapes, [unknown])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_quick_op_section_on_gpu(tmp_path):
    """Every implementation runs (compiled FlexAttention included) and
    agrees with the reference; triton rows report per-kernel times and the
    tuning configs."""
    result = run_benchmark(
        tmp_path, '--sections', 'op', '--dtype', 'float32', cpu=False)
    rows = rows_by_key(result['op'])
    for (impl, shape), row in rows.items():
        if (impl, shape) == ('unfold', 'quick/tiny'):
            assert 'error' in row
            continue
        assert_ran(row, 1e-3)  # fused: 3xTF32 dots
        assert row['peak_mib'] > 0
    from acmix_mm.ops.triton_kernels import KERNEL_DESIGNS, kernel_design
    script = load_script()
    for shape in script.QUICK_SHAPES:
        assert rows['flex', shape.name]['compiled'] is True
        fused = rows['triton', shape.name]
        kernels = KERNEL_DESIGNS[kernel_design(shape.channels // script.HEADS,
                                               shape.stride)]
        # The quick maps have no interior slot dK/dV tiles (KeyTiles).
        launched = set(kernels.names()) - {
            kernels.grad_key_value if kernels.edge_grad_key_value else None
        }
        assert all(fused['kernel_ms'][k] > 0 for k in launched), fused
        assert all(fused['tuning_configs'][k] for k in launched), fused
