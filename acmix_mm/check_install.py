"""Check an acmix_mm installation.

    python -m acmix_mm.check_install [--ops-only]

Prints the versions of torch, CUDA, Triton, mmengine, mmcv (and whether its
ops were compiled with CUDA), mmdet and mmseg; each attention backend, the
ops it implements, whether it can run here (for inference and training)
and, where it cannot, why, as ``acmix_mm.ops.choose_backend`` decides, and
what ``attn_impl='auto'`` picks; then runs checks: the reference op, on a
GPU the Triton backend against the reference
(forward and backward, float32 and bfloat16), and both backbones built from
the mmdet and mmseg registries. Exit status 1 if a check fails; checks that
cannot run here (the GPU ones on a CPU-only machine) are skipped.
``--ops-only`` checks only what ``acmix_mm.ops`` needs (torch, Triton), for
environments without OpenMMLab.
"""
import argparse
import importlib
import importlib.util
import platform
import sys
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from acmix_mm.ops.dispatch import (BACKENDS, LOCAL_ATTENTION, WINDOW_ATTENTION,
                                   choose_backend)
from acmix_mm.ops.reference import local_attention_reference
from acmix_mm.version import __version__

OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmseg')
# Triton backend check: (B, heads, D, H, W) q, k, v, 7x7 window, strides 1
# and 2.
TRITON_SHAPE = (2, 2, 16, 23, 29)
KERNEL_SIZE = 7
# float32 (3xTF32 or exact dots): error per unit of the result's magnitude.
FLOAT32_TOLERANCE = 1e-4
# bfloat16: the Triton backend may be at most this many times less accurate
# than the reference computed in bfloat16 (both against float64).
BFLOAT16_FACTOR = 2.0


class Check(NamedTuple):
    """One line of the report: status is PASS, FAIL or SKIP."""
    status: str
    name: str
    detail: str = ''


def module_version(name: str) -> Tuple[Optional[str], str]:
    """(version, note) of an importable module; version None with the
    reason if it is missing or fails to import."""
    if importlib.util.find_spec(name) is None:
        return None, 'not installed'
    try:
        module = importlib.import_module(name)
    except Exception as error:  # installed but broken: report, don't crash
        return None, f'fails to import: {type(error).__name__}: {error}'
    return getattr(module, '__version__', 'unknown version'), ''


def mmcv_ops_note() -> str:
    """Whether mmcv's compiled ops exist and were built with CUDA."""
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
        cuda = get_compiling_cuda_version()
    except Exception as error:
        return f'no compiled ops ({type(error).__name__}: {error})'
    if cuda in ('', 'not available'):
        return f'ops compiled without CUDA ({get_compiler_version()})'
    return f'ops compiled with CUDA {cuda} ({get_compiler_version()})'


def gpu_description() -> str:
    """The GPUs torch sees, or why it sees none."""
    if not torch.cuda.is_available():
        build = f'CUDA {torch.version.cuda} build' if torch.version.cuda \
            else 'CPU build'
        return f'none (torch {torch.__version__} is a {build})'
    names = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        names.append(
            f'{torch.cuda.get_device_name(index)} (sm_{major}{minor})')
    return ', '.join(names)


def environment_lines() -> List[Tuple[str, str]]:
    """(name, description) of every component."""
    cuda = f'CUDA {torch.version.cuda}' if torch.version.cuda else 'CPU build'
    lines = [('acmix_mm', __version__), ('Python', platform.python_version()),
             ('torch', f'{torch.__version__} ({cuda})'),
             ('GPU', gpu_description())]
    for name in ('triton', ) + OPENMMLAB:
        version, note = module_version(name)
        text = version or note
        if name == 'mmcv' and version:
            text = f'{version}, {mmcv_ops_note()}'
        lines.append((name, text))
    return lines


def backend_lines() -> List[Tuple[str, str]]:
    """(attn_impl, the ops it implements and whether it runs here, else
    why not), for float32 inputs on this machine's device; then what 'auto'
    picks for each op."""
    device = 'cuda' if torch.cuda.is_available() else 'cpu'

    def decide(op: str, attn_impl: str, training: bool):
        return choose_backend(op, attn_impl, device, torch.float32, 32, 7, 1,
                              training)

    def availability(op: str, backend: str) -> str:
        reasons = []
        for training in (False, True):
            try:
                decide(op, backend, training)
            except RuntimeError as error:
                reasons.append(str(error).split(' here: ', 1)[-1])
        if not reasons:
            return 'runs here'
        if len(reasons) == 1:
            return f'runs here for inference only: {reasons[0]}'
        return f'cannot run here: {reasons[0]}'

    lines = []
    for backend in ('triton', 'flex', 'sdpa', 'reference'):
        ops = [
            op for op in (LOCAL_ATTENTION, WINDOW_ATTENTION)
            if backend in BACKENDS[op]
        ]
        lines.append((backend, f'{" and ".join(ops)}: '
                      f'{availability(ops[0], backend)}'))
    picks = ', '.join(f'{op} -> {decide(op, "auto", True).backend}'
                      for op in (LOCAL_ATTENTION, WINDOW_ATTENTION))
    lines.append(('auto', f'{picks} (training, float32, {device})'))
    return lines


def max_error(actual: Tensor, expected: Tensor) -> float:
    """Largest absolute difference, in float64."""
    return (actual.double() - expected.double()).abs().max().item()


def outputs_and_grads(attention: Callable, q: Tensor, k: Tensor, v: Tensor,
                      stride: int, grad_out: Tensor) -> List[Tensor]:
    """[out, dq, dk, dv] of ``attention`` at q, k, v."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, KERNEL_SIZE, stride, 0.25)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out, *grads]


def check_reference() -> Check:
    """The reference op runs forward and backward on this machine."""
    q, k, v = torch.randn(3, 1, 2, 16, 9, 11).unbind(0)
    results = outputs_and_grads(local_attention_reference, q, k, v, 1,
                                torch.randn(1, 2, 16, 9, 11))
    finite = all(torch.isfinite(t).all() for t in results)
    return Check('PASS' if finite else 'FAIL',
                 'reference local attention, forward and backward',
                 '' if finite else 'non-finite results')


def check_triton(dtype: torch.dtype, stride: int) -> Check:
    """Triton backend vs the float64 reference on the GPU, forward and
    grads."""
    name = f'triton vs reference, {str(dtype)[6:]}, stride {stride}'
    if not torch.cuda.is_available():
        return Check('SKIP', name, 'no CUDA GPU')
    from acmix_mm.ops import triton
    reason = triton.triton_unavailable_reason()
    if reason is not None:
        return Check('FAIL', name, reason)
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, *TRITON_SHAPE, generator=generator).cuda()
    out_shape = (*TRITON_SHAPE[:3], -(-TRITON_SHAPE[3] // stride),
                 -(-TRITON_SHAPE[4] // stride))
    grad_out = torch.randn(out_shape, generator=generator).cuda()
    truth = outputs_and_grads(local_attention_reference, q.double(),
                              k.double(), v.double(), stride, grad_out)
    inputs = [t.to(dtype) for t in (q, k, v)]
    try:
        results = outputs_and_grads(triton.local_attention, *inputs, stride,
                                    grad_out)
    except Exception as error:
        return Check('FAIL', name, f'{type(error).__name__}: {error}')
    errors = [max_error(a, b) for a, b in zip(results, truth)]
    if dtype == torch.float32:
        limits = [
            FLOAT32_TOLERANCE * max(1.,
                                    t.abs().max().item()) for t in truth
        ]
    else:
        rounded = outputs_and_grads(local_attention_reference, *inputs, stride,
                                    grad_out)
        limits = [
            BFLOAT16_FACTOR * max_error(a, b) + 1e-6
            for a, b in zip(rounded, truth)
        ]
    passed = all(e <= limit for e, limit in zip(errors, limits))
    detail = ', '.join(
        f'{label} {e:.1e} (limit {limit:.1e})'
        for label, e, limit in zip(('out', 'dq', 'dk', 'dv'), errors, limits))
    return Check('PASS' if passed else 'FAIL', name, f'max error: {detail}')


def check_openmmlab() -> List[Check]:
    """OpenMMLab imports, mmcv's CUDA ops on a GPU, and both backbones
    built through the mmdet and mmseg registries."""
    checks = []
    for name in OPENMMLAB:
        version, note = module_version(name)
        if version is None:
            checks.append(
                Check('FAIL', f'import {name}',
                      f'{note}; the models and configs need it'))
    if checks:
        return checks
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        checks.append(check_mmcv_cuda_ops())
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS as MMSEG_MODELS
    backbones = [
        ('mmdet', MMDET_MODELS, dict(type='acmix_mm.ACmixResNet', depth=26)),
        ('mmseg', MMSEG_MODELS,
         dict(
             type='acmix_mm.ACmixSwinTransformer',
             embed_dims=32,
             depths=(1, 1, 1, 1),
             num_heads=(1, 2, 4, 8))),
    ]
    for scope, registry, cfg in backbones:
        name = f'{scope} builds {cfg["type"]}, forward 1x3x64x64 on {device}'
        try:
            with DefaultScope.overwrite_default_scope(scope):
                model = registry.build(cfg).to(device).eval()
            with torch.no_grad():
                outs = model(torch.randn(1, 3, 64, 64, device=device))
            shapes = ' '.join('x'.join(map(str, o.shape[1:])) for o in outs)
            checks.append(Check('PASS', name, f'features {shapes}'))
        except Exception as error:
            checks.append(
                Check('FAIL', name, f'{type(error).__name__}: {error}'))
    return checks


def check_mmcv_cuda_ops() -> Check:
    """mmcv's compiled ops run on the GPU (Mask R-CNN needs them)."""
    name = "mmcv's ops on the GPU (nms)"
    rebuild = ('rebuild mmcv with FORCE_CUDA=1 MMCV_WITH_OPS=1 (see the '
               'README) or install its prebuilt CUDA wheel')
    note = mmcv_ops_note()
    if 'with CUDA' not in note:
        # CUDA tensors handed to CPU-only ops crash the process.
        return Check('FAIL', name, f'mmcv has {note}; {rebuild}')
    try:
        from mmcv.ops import nms
        boxes = torch.tensor(
            [[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]],
            device='cuda')
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device='cuda'), 0.5)
    except Exception as error:
        return Check('FAIL', name,
                     f'{type(error).__name__}: {error}; {rebuild}')
    ok = keep.tolist() == [0, 2]
    return Check('PASS' if ok else 'FAIL', name,
                 '' if ok else f'kept {keep.tolist()}, expected [0, 2]')


def run_checks(ops_only: bool) -> Iterator[Check]:
    """The checks, each run when the report reaches it."""
    yield check_reference()
    for dtype in (torch.float32, torch.bfloat16):
        for stride in (1, 2):
            yield check_triton(dtype, stride)
    if not ops_only:
        yield from check_openmmlab()


def print_table(title: str, rows: List[Tuple[str, str]]) -> None:
    print(f'\n{title}')
    for name, text in rows:
        print(f'  {name:<11} {text}')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m acmix_mm.check_install',
        description='Check an acmix_mm installation.')
    parser.add_argument(
        '--ops-only',
        action='store_true',
        help='check only acmix_mm.ops (torch, Triton), not '
        'the OpenMMLab packages and models')
    args = parser.parse_args(argv)
    print_table('Environment', environment_lines())
    print_table('Attention backends (attn_impl)', backend_lines())
    print(
        '\nChecks (on a GPU the first run compiles the fused kernels, '
        'which takes minutes)',
        flush=True)
    checks = []
    for check in run_checks(args.ops_only):
        detail = f': {check.detail}' if check.detail else ''
        print(f'  {check.status:<5} {check.name}{detail}', flush=True)
        checks.append(check)
    failed = sum(check.status == 'FAIL' for check in checks)
    skipped = sum(check.status == 'SKIP' for check in checks)
    passed = len(checks) - failed - skipped
    print(f'\n{passed} passed, {failed} failed, {skipped} skipped')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
