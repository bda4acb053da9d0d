"""acmix_mm.ops stands alone (torch and Triton only), and
``python -m acmix_mm.check_install`` reports this machine correctly, with
and without OpenMMLab."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ON_CUDA = torch.cuda.is_available()
OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmseg')
# Makes every OpenMMLab import fail, as where they are not installed.
WITHOUT_OPENMMLAB = ('import sys\n'
                     f'sys.modules.update(dict.fromkeys({OPENMMLAB!r}))\n')


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600)


def check_install(*args: str, without_openmmlab: bool = False):
    prefix = WITHOUT_OPENMMLAB if without_openmmlab else ''
    return run_python(prefix + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ['check_install', *{list(args)!r}]
        runpy.run_module('acmix_mm.check_install', run_name='__main__')
        """))


def test_ops_import_and_run_without_openmmlab():
    pytest.importorskip('triton')
    result = run_python(WITHOUT_OPENMMLAB + textwrap.dedent("""
        import torch
        from acmix_mm.ops import local_attention, local_attention_reference
        from acmix_mm.ops import triton
        from acmix_mm.ops.triton_kernels import (
            local_attention_backward, local_attention_forward)
        try:
            import acmix_mm.models
        except ImportError:
            pass
        else:
            raise AssertionError('OpenMMLab was importable after all')

        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        q, k, v = [t.requires_grad_() for t in
                   torch.randn(3, 1, 2, 8, 6, 7, device=device).unbind(0)]
        expected = local_attention_reference(q, k, v, 5, 2, 0.5)
        expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
        for out in (local_attention(q, k, v, 5, 2, 0.5),
                    local_attention(q, k, v, 5, 2, 0.5, attn_impl='triton'),
                    triton.local_attention(q, k, v, 5, 2, 0.5)):
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
            grads = torch.autograd.grad(out.sum(), (q, k, v))
            for grad, reference in zip(grads, expected_grads):
                torch.testing.assert_close(grad, reference, atol=1e-4,
                                           rtol=1e-4)
        loaded = sorted(name for name, module in sys.modules.items()
                        if module is not None
                        and name.split('.')[0] in OPENMMLAB)
        print('openmmlab modules:', loaded)
        """).replace('OPENMMLAB', repr(OPENMMLAB)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'openmmlab modules: []' in result.stdout


def test_registry_still_finds_models_lazily():
    """Importing acmix_mm no longer registers the models; mmengine imports
    them on the first scoped name."""
    result = run_python("""
        import sys
        import acmix_mm
        assert 'acmix_mm.models' not in sys.modules
        from mmengine.registry import MODELS, init_default_scope
        init_default_scope('mmdet')
        print(type(MODELS.build(dict(type='acmix_mm.ACmixResNet',
                                     depth=26))).__name__)
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['ACmixResNet']


def test_check_install_reports_this_machine():
    result = check_install()
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert f'torch       {torch.__version__}' in out
    for name in ('triton', 'mmengine', 'mmcv', 'mmdet', 'mmseg'):
        assert f'\n  {name:<11} ' in out
    assert 'ops compiled with' in out  # mmcv with its compiled ops
    assert 'PASS  reference local attention' in out
    assert 'PASS  mmdet builds acmix_mm.ACmixResNet' in out
    assert 'PASS  mmseg builds acmix_mm.ACmixSwinTransformer' in out
    assert ' 0 failed' in out
    assert '  triton      local_attention: ' in out
    assert '  flex        local_attention: ' in out
    assert '  sdpa        window_attention: runs here' in out
    assert '  reference   local_attention and window_attention: runs here' \
        in out
    if ON_CUDA:
        assert '  auto        local_attention -> triton, window_attention ' \
            '-> sdpa' in out
        assert out.count('PASS  triton vs reference') == 4
    else:
        assert '  auto        local_attention -> reference, ' \
            'window_attention -> sdpa' in out
        assert out.count('SKIP  triton vs reference') == 4


def test_check_install_fails_without_openmmlab():
    result = check_install(without_openmmlab=True)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    for name in OPENMMLAB:
        assert f'  {name:<11} not installed' in result.stdout
        assert f'FAIL  import {name}: not installed' in result.stdout


def test_check_install_ops_only_without_openmmlab():
    result = check_install('--ops-only', without_openmmlab=True)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert 'PASS  reference local attention' in result.stdout
    assert 'FAIL' not in result.stdout
