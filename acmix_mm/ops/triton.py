"""Triton backend of the local attention.

:func:`local_attention` runs the fused kernels of
:mod:`~acmix_mm.ops.triton_kernels` (imported on first use, so this module
imports without Triton) as the custom op
``torch.ops.acmix_mm.local_attention``::

    acmix_mm::local_attention(Tensor q, Tensor k, Tensor v, int kernel_size,
        int stride, float scale, bool fallback=False) -> (Tensor out,
        Tensor lse)

with a fake (meta) implementation and autograd, whose backward is the custom
op ``acmix_mm::local_attention_backward``. ``torch.compile`` therefore
traces through it (``fullgraph=True``, dynamic image sizes); the kernels
stay opaque to Inductor and launch with their own autotuning. Before torch
2.4 (no ``torch.library.custom_op``) the same functions run as a
``torch.autograd.Function``, where ``torch.compile`` breaks the graph.
"""
import contextlib
import functools
import re
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .reference import local_attention_reference

# The oldest Triton the kernels compile with (torch 2.1's).
MIN_TRITON_VERSION = (2, 1)
# Whether this torch has torch.library.custom_op (2.4 and newer).
CUSTOM_OP_AVAILABLE = hasattr(torch.library, 'custom_op')

# Kernel variants (triton_kernels.variant_key) that failed to compile or
# launch, with the error: calls with fallback=True do not try them again.
_FAILED_VARIANTS: Dict[tuple, str] = {}
# What torch's below-autograd guard excludes: autograd of every backend.
_AUTOGRAD_KEYS = (torch._C.DispatchKey.AutogradFunctionality,
                  torch._C.DispatchKey.AutogradOther,
                  torch._C.DispatchKey.AutogradNestedTensor,
                  torch._C.DispatchKey.ADInplaceOrView)


@functools.lru_cache(maxsize=None)
def triton_unavailable_reason() -> Optional[str]:
    """Why the Triton kernels cannot be used in this environment, or None."""
    try:
        import triton
    except ImportError as error:
        return f'Triton is not installed ({error})'
    numbers = re.match(r'(\d+)\.(\d+)', triton.__version__)
    if numbers is None or tuple(map(int,
                                    numbers.groups())) < MIN_TRITON_VERSION:
        oldest = '.'.join(map(str, MIN_TRITON_VERSION))
        return (f'Triton {triton.__version__} is older than {oldest}, the '
                'oldest the fused kernels support')
    try:
        from . import triton_kernels  # noqa: F401
    except Exception as error:  # e.g. an API this Triton lacks
        return (f'the fused kernels cannot be loaded with Triton '
                f'{triton.__version__}: {type(error).__name__}: {error}')
    return None


def local_attention_unavailable_reason(q: Tensor, k: Tensor, v: Tensor,
                                       kernel_size: int,
                                       stride: int) -> Optional[str]:
    """Why the Triton kernels cannot run on these (B, heads, D, H, W)
    inputs, or None: Triton missing or too old, kernels that do not load,
    unsupported inputs (dtype, head_dim, kernel_size, stride; CPU tensors
    without ``TRITON_INTERPRET=1``) or a kernel variant that failed
    before."""
    reason = triton_unavailable_reason()
    if reason is not None:
        return reason
    from .triton_kernels import check_inputs, variant_key
    try:
        check_inputs(q, k, v, kernel_size, stride)
    except ValueError as error:
        return str(error)
    return _FAILED_VARIANTS.get(variant_key(q, kernel_size, stride))


def _fall_back(error: RuntimeError) -> None:
    """Remember the failed kernel variant (a ``KernelError``) and warn once
    that the reference takes over."""
    _FAILED_VARIANTS[error.variant] = str(error)
    from .dispatch import warn_fallback
    warn_fallback(str(error))


def _variant_failed(q: Tensor, kernel_size: int, stride: int) -> bool:
    from .triton_kernels import variant_key
    return variant_key(q, kernel_size, stride) in _FAILED_VARIANTS


def _output_size(size, stride: int):
    """ceil(size / stride), also for symbolic sizes."""
    return (size + stride - 1) // stride


def _forward(q: Tensor,
             k: Tensor,
             v: Tensor,
             kernel_size: int,
             stride: int,
             scale: float,
             fallback: bool = False) -> Tuple[Tensor, Tensor]:
    """(B, heads, D, H, W) q, k, v -> out (B, heads, D, Hq, Wq) and lse
    (B * heads, Hq, Wq) float32, both contiguous; where the reference
    computed out (fallback), lse is zeros and unused."""
    from .triton_kernels import (KernelError, check_inputs,
                                 local_attention_forward)
    check_inputs(q, k, v, kernel_size, stride)
    if not (fallback and _variant_failed(q, kernel_size, stride)):
        try:
            return local_attention_forward(q, k, v, kernel_size, stride, scale)
        except KernelError as error:
            if not fallback:
                raise
            _fall_back(error)
    out = local_attention_reference(q, k, v, kernel_size, stride, scale)
    batch, heads, _, out_height, out_width = out.shape
    lse = torch.zeros((batch * heads, out_height, out_width),
                      dtype=torch.float32,
                      device=q.device)
    return out.contiguous(), lse


def _check_matching(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ValueError unless q, k, v are 5-D with one shape, dtype and
    device: what the fake implementation relies on (the kernels check the
    rest)."""
    if q.dim() != 5:
        raise ValueError('q must be 5-D (B, heads, D, H, W), got shape '
                         f'{tuple(q.shape)}')
    for name, attribute in (('shape', 'shape'), ('dtype', 'dtype'),
                            ('device', 'device')):
        values = [getattr(tensor, attribute) for tensor in (q, k, v)]
        if not values[0] == values[1] == values[2]:
            raise ValueError(f'q, k and v must have the same {name}, got ' +
                             ', '.join(map(str, values)))


def _forward_fake(q: Tensor,
                  k: Tensor,
                  v: Tensor,
                  kernel_size: int,
                  stride: int,
                  scale: float,
                  fallback: bool = False) -> Tuple[Tensor, Tensor]:
    """Shapes, dtypes and strides of :func:`_forward`'s results."""
    _check_matching(q, k, v)
    batch, heads, head_dim, height, width = q.shape
    out_height = _output_size(height, stride)
    out_width = _output_size(width, stride)
    out = v.new_empty((batch, heads, head_dim, out_height, out_width))
    lse = q.new_empty((batch * heads, out_height, out_width),
                      dtype=torch.float32)
    return out, lse


def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
              lse: Tensor, kernel_size: int, stride: int, scale: float,
              need_grad_q: bool, need_grad_kv: bool,
              fallback: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of :func:`_forward`: contiguous (B, heads, D,
    H, W) in q's dtype, a 0-element tensor where not needed. The reference
    recomputes them where a kernel variant failed (fallback)."""
    from .triton_kernels import KernelError, local_attention_backward
    grads = None
    if not (fallback and _variant_failed(q, kernel_size, stride)):
        try:
            grads = local_attention_backward(
                grad_out,
                q,
                k,
                v,
                out,
                lse,
                kernel_size,
                stride,
                scale,
                need_grad_q=need_grad_q,
                need_grad_kv=need_grad_kv)
        except KernelError as error:
            if not fallback:
                raise
            _fall_back(error)
    if grads is None:
        grads = _reference_grads(grad_out, q, k, v, kernel_size, stride, scale)
    needed = (need_grad_q, need_grad_kv, need_grad_kv)
    return tuple(grad.contiguous() if need else q.new_empty(0)
                 for grad, need in zip(grads, needed))


def _backward_fake(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor,
                   out: Tensor, lse: Tensor, kernel_size: int, stride: int,
                   scale: float, need_grad_q: bool, need_grad_kv: bool,
                   fallback: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Shapes, dtypes and strides of :func:`_backward`'s results."""
    needed = (need_grad_q, need_grad_kv, need_grad_kv)
    return tuple(
        q.new_empty(q.shape) if need else q.new_empty(0) for need in needed)


def _reference_grads(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor,
                     kernel_size: int, stride: int,
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v through the reference, recomputed (also inside
    the backward op's implementation, which runs below autograd)."""
    with _autograd_recording():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = local_attention_reference(*leaves, kernel_size, stride, scale)
        return torch.autograd.grad(out, leaves, grad_out)


@contextlib.contextmanager
def _autograd_recording():
    """Grad mode on and the autograd dispatch keys no longer excluded: a
    custom op's implementation (eager, or in a compiled graph) runs with
    them excluded, where autograd would record nothing."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(
            torch._C._dispatch_tls_local_include_set(), exclude), \
            torch.enable_grad():
        yield


def _setup_context(ctx, inputs: tuple, output: Tuple[Tensor, Tensor]):
    q, k, v, kernel_size, stride, scale, fallback = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.arguments = (kernel_size, stride, scale)
    ctx.fallback = fallback


def _backward_formula(ctx, grad_out: Tensor, grad_lse: Optional[Tensor]):
    """Gradients of q, k, v (None where not needed) and None for the other
    arguments."""
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    grad_q, grad_k, grad_v = _backward_op(grad_out, *ctx.saved_tensors,
                                          *ctx.arguments, need_q, need_k
                                          or need_v, ctx.fallback)
    return (grad_q if need_q else None, grad_k if need_k else None,
            grad_v if need_v else None, None, None, None, None)


if CUSTOM_OP_AVAILABLE:
    _forward_op = torch.library.custom_op(
        'acmix_mm::local_attention',
        _forward,
        mutates_args=(),
        schema='(Tensor q, Tensor k, Tensor v, int kernel_size, int stride, '
        'float scale, bool fallback=False) -> (Tensor, Tensor)')
    _forward_op.register_fake(_forward_fake)
    _backward_op = torch.library.custom_op(
        'acmix_mm::local_attention_backward',
        _backward,
        mutates_args=(),
        schema='(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, '
        'Tensor lse, int kernel_size, int stride, float scale, '
        'bool need_grad_q, bool need_grad_kv, bool fallback) '
        '-> (Tensor, Tensor, Tensor)')
    _backward_op.register_fake(_backward_fake)
    _forward_op.register_autograd(
        _backward_formula, setup_context=_setup_context)
else:

    class _LocalAttentionFunction(torch.autograd.Function):
        """The op's forward, backward and autograd as a Function (torch
        older than 2.4); torch.compile breaks the graph at it."""
        forward = staticmethod(_forward)
        setup_context = staticmethod(_setup_context)
        backward = staticmethod(_backward_formula)

    _forward_op = _LocalAttentionFunction.apply
    _backward_op = _backward


def _head_contiguous(x: Tensor, pe: Optional[Tensor]) -> Tensor:
    """``x - pe`` (``x`` itself where pe is None) for x (B, heads, D, H, W)
    and pe broadcasting to it, laid out head-contiguous (channel stride 1),
    in one pass: the slot kernels then load each pixel's channels as
    16-byte vectors."""
    out = _head_contiguous_fake(x, pe)
    return out.copy_(x) if pe is None else torch.sub(x, pe, out=out)


def empty_head_contiguous(x: Tensor) -> Tensor:
    """Uninitialised (B, heads, D, H, W) like ``x``, with channel stride 1
    (for head dims that are multiples of 8, loadable as 16-byte vectors)."""
    batch, heads, head_dim, height, width = x.shape
    return x.new_empty(
        (batch, heads, height, width, head_dim)).permute(0, 1, 4, 2, 3)


def _head_contiguous_fake(x: Tensor, pe: Optional[Tensor]) -> Tensor:
    """Shape, dtype and strides of :func:`_head_contiguous`."""
    return empty_head_contiguous(x)


def _head_contiguous_setup_context(ctx, inputs: Tuple[Tensor,
                                                      Optional[Tensor]],
                                   output: Tensor):
    pe = inputs[1]
    ctx.pe_shape = None if pe is None else pe.shape


def _head_contiguous_backward(ctx,
                              grad: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    grad_pe = None
    if ctx.needs_input_grad[1]:
        grad_pe = grad.sum_to_size(ctx.pe_shape).neg()
    return grad, grad_pe


if CUSTOM_OP_AVAILABLE:
    _head_contiguous_op = torch.library.custom_op(
        'acmix_mm::head_contiguous',
        _head_contiguous,
        mutates_args=(),
        schema='(Tensor x, Tensor? pe) -> Tensor')
    _head_contiguous_op.register_fake(_head_contiguous_fake)
    _head_contiguous_op.register_autograd(
        _head_contiguous_backward,
        setup_context=_head_contiguous_setup_context)
else:

    class _HeadContiguousFunction(torch.autograd.Function):
        """:func:`head_contiguous` as a Function (torch older than 2.4)."""
        forward = staticmethod(_head_contiguous)
        setup_context = staticmethod(_head_contiguous_setup_context)
        backward = staticmethod(_head_contiguous_backward)

    _head_contiguous_op = _HeadContiguousFunction.apply


def loads_vectors(head_dim: int, stride: int) -> bool:
    """Whether the kernels the op runs at ``head_dim`` and ``stride`` (the
    slot design) load head-contiguous keys and values as vectors; the
    region kernels gather channel-major tiles, best from channel-major
    maps."""
    from .triton_kernels import kernel_design
    return kernel_design(head_dim, stride) == 'slot'


def head_contiguous(x: Tensor, pe: Optional[Tensor] = None) -> Tensor:
    """``x - pe`` (the layers' keys) or ``x`` (their values), with autograd,
    as a (B, heads, D, H, W) map with channel stride 1 for the kernels'
    vector loads (``torch.ops.acmix_mm.head_contiguous``, opaque to
    ``torch.compile``, which would not keep the layout).

    Args:
        x: (B, heads, D, H, W) projected keys or values, any strides.
        pe: None, or a positional term broadcasting to x, e.g. (1, 1, D,
            H, W).
    """
    return _head_contiguous_op(x, pe)


def local_attention(q: Tensor,
                    k: Tensor,
                    v: Tensor,
                    kernel_size: int,
                    stride: int = 1,
                    scale: float = 1.0,
                    *,
                    fallback: bool = False) -> Tensor:
    """Multi-head attention of each query over its reflected neighbourhood,
    fused in Triton kernels, with autograd.

    Same arguments and result as :func:`~acmix_mm.ops.reference.
    local_attention_reference`; runs ``torch.ops.acmix_mm.local_attention``.

    Args:
        q: (B, heads, D, H, W) queries at full resolution, unscaled.
        k: (B, heads, D, H, W) keys.
        v: (B, heads, D, H, W) values; any strides for all three.
        kernel_size: window size, 3, 5 or 7.
        stride: query stride, 1 or 2.
        scale: factor applied to the queries.
        fallback: if a kernel fails to compile or launch (forward or
            backward), remember its variant, warn once and let the reference
            compute the result; False raises the ``KernelError`` (a
            RuntimeError naming the kernel and the cause).

    Returns:
        Tensor: (B, heads, D, ceil(H / stride), ceil(W / stride)), dtype of v,
        contiguous.

    Raises:
        ValueError: inputs the kernels do not support
            (:func:`local_attention_unavailable_reason` says why first).
    """
    return _forward_op(q, k, v, kernel_size, stride, float(scale), fallback)[0]
