"""The one place that chooses an attention backend, and says why.

Two ops, each with its backends (one file each):

========================  =============================================
op                        backends
========================  =============================================
``'local_attention'``     ``'triton'`` (:mod:`.triton`), ``'flex'``
  (ACmix, ResNet)         (:mod:`.flex`), ``'reference'`` (:mod:`.reference`)
``'window_attention'``    ``'sdpa'`` (:mod:`.sdpa`), ``'reference'``
  (ShiftWindowACmix)
========================  =============================================

``attn_impl`` is ``'auto'`` or a backend name. A named backend runs or
raises a RuntimeError saying why it cannot; ``'auto'`` takes the first
backend of :data:`AUTO_ORDER` that can run, all of them exact, and warns once
per reason when it has to skip one a user would expect (e.g. CUDA tensors
but no usable Triton). :func:`choose_backend` is cached per call-site facts
(op, attn_impl, device type, dtype, head_dim, window, stride, whether
gradients are needed) and is a constant to ``torch.compile``, so a layer asks
it on every call at no cost and compiled graphs contain only the chosen
backend.
"""
import functools
import warnings
from typing import Callable, Dict, NamedTuple, Optional, Set, Tuple

import torch
from torch import Tensor

from . import flex, reference, sdpa

LOCAL_ATTENTION = 'local_attention'
WINDOW_ATTENTION = 'window_attention'
# The backends implementing each op.
BACKENDS: Dict[str, Tuple[str, ...]] = {
    LOCAL_ATTENTION: ('triton', 'flex', 'reference'),
    WINDOW_ATTENTION: ('sdpa', 'reference'),
}
ATTN_IMPLS = ('auto', 'reference', 'triton', 'flex', 'sdpa')

# 'auto' takes the first of these that can run, by (op, device type); device
# types other than CUDA follow the CPU order. All backends are exact; the
# order is by speed.
# CUDA: the fused Triton kernels read q, k, v once; FlexAttention (compiled)
# builds the same window from a block mask; the reference materialises every
# offset. SDPA runs flash / memory-efficient kernels where the reference
# materialises the logits. (No GPU was at hand to measure this order; the
# README's GPU benchmark command measures it.)
# CPU: measured (README, "Attention backends"): eager FlexAttention has no
# CPU backward and the Triton interpreter is far slower than the reference;
# SDPA ties with the explicit softmax in a Swin-T train step and does not
# materialise the logits, so it comes first.
AUTO_ORDER: Dict[Tuple[str, str], Tuple[str, ...]] = {
    (LOCAL_ATTENTION, 'cuda'): ('triton', 'flex', 'reference'),
    (LOCAL_ATTENTION, 'cpu'): ('reference', ),
    (WINDOW_ATTENTION, 'cuda'): ('sdpa', 'reference'),
    (WINDOW_ATTENTION, 'cpu'): ('sdpa', 'reference'),
}
# Why 'auto' leaves a backend out of the CPU order although it may run.
AUTO_SKIPS_ON_CPU = {
    'triton': ("'auto' does not use it on the CPU: the Triton interpreter is "
               'far slower than the reference'),
    'flex': ("'auto' does not use it on the CPU: eager FlexAttention "
             'materialises every logit and has no backward there'),
}

_WARNED: Set[str] = set()


class Decision(NamedTuple):
    """The backend chosen for one call site and why each other backend of
    the op was not (``(backend, reason)`` pairs, in order)."""
    op: str
    attn_impl: str
    backend: str
    rejected: Tuple[Tuple[str, str], ...]

    def explain(self) -> str:
        """One line: the choice and the rejections."""
        why = '; '.join(f'not {name}: {reason}'
                        for name, reason in self.rejected)
        return (f'{self.op} with attn_impl={self.attn_impl!r} runs '
                f'{self.backend}' + (f' ({why})' if why else ''))


def check_attn_impl(attn_impl: str, op: Optional[str] = None) -> str:
    """Return ``attn_impl`` if it is 'auto' or a backend (of ``op``, if
    given); otherwise raise ValueError saying what is accepted."""
    if attn_impl == 'fused':
        raise ValueError(
            "attn_impl='fused' was replaced by the backend names: 'triton' "
            "(Triton kernels, local attention of ACmix), 'flex' "
            "(FlexAttention, local attention) and 'sdpa' "
            "(scaled_dot_product_attention, window attention of "
            "ShiftWindowACmix); 'auto' picks the fastest that can run")
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got '
                         f'{attn_impl!r}')
    if op is not None and attn_impl != 'auto' \
            and attn_impl not in BACKENDS[op]:
        raise ValueError(f'attn_impl={attn_impl!r} does not implement '
                         f'{op}; the backends that do: {BACKENDS[op]}')
    return attn_impl


def warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time only."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def warn_fallback(reason: str) -> None:
    """Warn once per reason that the reference computes a result 'auto'
    gave to a backend that failed at run time."""
    warn_once(f'ACmix local attention falls back to the reference '
              f'implementation: {reason}')


def unavailable_reason(op: str,
                       backend: str,
                       q: Tensor,
                       k: Tensor,
                       v: Tensor,
                       kernel_size: int = 0,
                       stride: int = 1) -> Optional[str]:
    """Why ``backend`` cannot compute ``op`` on these inputs, or None: the
    backend's own predicate (the reference always runs)."""
    if backend == 'reference':
        return None
    if backend == 'sdpa':
        return sdpa.window_attention_unavailable_reason(q, k, v)
    if backend == 'flex':
        return flex.local_attention_unavailable_reason(q, k, v, kernel_size,
                                                       stride)
    from . import triton  # imports Triton itself only when asked
    return triton.local_attention_unavailable_reason(q, k, v, kernel_size,
                                                     stride)


def _example_inputs(op: str, device_type: str, dtype: torch.dtype,
                    head_dim: int,
                    requires_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k, v of one pixel or token with these facts, for the predicates."""
    shape = (1, 1, head_dim, 1, 1) if op == LOCAL_ATTENTION else \
        (1, 1, 1, head_dim)
    return tuple(
        torch.zeros(
            shape,
            dtype=dtype,
            device=device_type,
            requires_grad=requires_grad) for _ in range(3))


def _constant_to_compile(fn: Callable) -> Callable:
    """``fn`` marked so that torch.compile treats its result as a constant.

    Where torch's compiler cannot be imported (a Triton older than this torch
    expects), torch.compile cannot run either, and ``fn`` stays unmarked.
    """
    try:
        return torch.compiler.assume_constant_result(fn)
    except ImportError:
        return fn


@_constant_to_compile
def choose_backend(op: str,
                   attn_impl: str,
                   device_type: str,
                   dtype: torch.dtype,
                   head_dim: int,
                   kernel_size: int = 0,
                   stride: int = 1,
                   requires_grad: bool = False) -> Decision:
    """The backend computing ``op`` for one call site, decided on the
    first call with these arguments (a constant to ``torch.compile``).

    Args:
        op: :data:`LOCAL_ATTENTION` or :data:`WINDOW_ATTENTION`.
        attn_impl: 'auto' or a backend name of ``op``.
        device_type, dtype: of q, k, v ('cuda', 'cpu', ...).
        head_dim: channels per head.
        kernel_size, stride: the window and query stride (local attention).
        requires_grad: whether gradients flow back through the op.

    Returns:
        Decision: the backend and why each other backend was rejected.

    Raises:
        ValueError: an ``attn_impl`` that is no backend of ``op`` (or
            'fused', which the backend names replaced).
        RuntimeError: a named backend that cannot run here, with the reason.
    """
    return _decide(op, attn_impl, device_type, dtype, head_dim, kernel_size,
                   stride, requires_grad)


def clear_decisions() -> None:
    """Forget every decision, e.g. after installing Triton."""
    _decide.cache_clear()


@functools.lru_cache(maxsize=None)
def _decide(op: str, attn_impl: str, device_type: str, dtype: torch.dtype,
            head_dim: int, kernel_size: int, stride: int,
            requires_grad: bool) -> Decision:
    """:func:`choose_backend`, cached (Dynamo traces into lru_cache
    wrappers, so the constant marker sits on a plain function)."""
    check_attn_impl(attn_impl, op)
    inputs = _example_inputs(op, device_type, dtype, head_dim, requires_grad)

    def reason(backend: str) -> Optional[str]:
        return unavailable_reason(op, backend, *inputs, kernel_size, stride)

    backends = BACKENDS[op]
    if attn_impl != 'auto':
        why = reason(attn_impl)
        if why is not None:
            raise RuntimeError(f'attn_impl={attn_impl!r} cannot run {op} '
                               f'here: {why}')
        return Decision(
            op, attn_impl, attn_impl,
            tuple((name, f'attn_impl={attn_impl!r} named another')
                  for name in backends if name != attn_impl))
    order = AUTO_ORDER.get((op, device_type), AUTO_ORDER[(op, 'cpu')])
    rejected = []
    for name in order:
        why = reason(name)
        if why is None:
            break
        # A preferred backend that cannot run is worth a warning.
        warn_once(f"attn_impl='auto' does not run {op} with {name}: {why}")
        rejected.append((name, why))
    rejected += [(other, f"'auto' prefers {name}") if other in order else
                 (other, AUTO_SKIPS_ON_CPU[other]) for other in backends
                 if other != name and other not in dict(rejected)]
    return Decision(op, attn_impl, name, tuple(rejected))


def _call_site(q: Tensor, k: Tensor, v: Tensor) -> dict:
    """The facts of :func:`choose_backend` that the inputs give."""
    return dict(
        device_type=q.device.type,
        dtype=q.dtype,
        requires_grad=torch.is_grad_enabled()
        and any(t.requires_grad for t in (q, k, v)))


def run_local_attention(decision: Decision,
                        q: Tensor,
                        k: Tensor,
                        v: Tensor,
                        kernel_size: int,
                        stride: int = 1,
                        scale: float = 1.0) -> Tensor:
    """Local attention by ``decision.backend``; arguments, shapes and
    result as :func:`~acmix_mm.ops.reference.local_attention_reference`.
    Under 'auto' a Triton kernel failing at run time hands over to the
    reference with one warning; a named backend raises instead."""
    if decision.backend == 'triton':
        from . import triton
        return triton.local_attention(
            q,
            k,
            v,
            kernel_size,
            stride,
            scale,
            fallback=decision.attn_impl == 'auto')
    if decision.backend == 'flex':
        return flex.local_attention(q, k, v, kernel_size, stride, scale)
    return reference.local_attention_reference(q, k, v, kernel_size, stride,
                                               scale)


def local_attention_inputs(decision: Decision, k: Tensor, v: Tensor,
                           pe: Tensor, stride: int) -> Tuple[Tensor, Tensor]:
    """The layers' keys ``k - pe`` and values ``v`` (B, heads, D, H, W) in
    the layout ``decision.backend`` loads fastest at ``stride``:
    head-contiguous where the Triton kernels load them as vectors (keys in
    the same single pass, values in one copy), else ``k - pe`` and ``v``
    as they are."""
    if decision.backend == 'triton':
        from . import triton
        if triton.loads_vectors(k.shape[2], stride):
            return triton.head_contiguous(k, pe), triton.head_contiguous(v)
    return k - pe, v


def run_window_attention(decision: Decision,
                         q: Tensor,
                         k: Tensor,
                         v: Tensor,
                         bias: Tensor,
                         scale: float,
                         dropout_p: float = 0.) -> Tensor:
    """Window attention by ``decision.backend``; arguments, shapes and
    result as :func:`~acmix_mm.ops.reference.window_attention_reference`."""
    if decision.backend == 'sdpa':
        return sdpa.window_attention(q, k, v, bias, scale, dropout_p)
    return reference.window_attention_reference(q, k, v, bias, scale,
                                                dropout_p)


def local_attention(q: Tensor,
                    k: Tensor,
                    v: Tensor,
                    kernel_size: int,
                    stride: int = 1,
                    scale: float = 1.0,
                    attn_impl: str = 'auto') -> Tensor:
    """ACmix's local attention by the backend :func:`choose_backend` picks.

    Args:
        q: (B, heads, D, H, W) queries at full resolution, unscaled.
        k: (B, heads, D, H, W) keys (positional term folded in).
        v: (B, heads, D, H, W) values.
        kernel_size: odd window size.
        stride: query stride.
        scale: factor applied to the queries.
        attn_impl: 'auto', 'triton', 'flex' or 'reference'.

    Returns:
        Tensor: (B, heads, D, ceil(H / stride), ceil(W / stride)).
    """
    decision = choose_backend(
        LOCAL_ATTENTION,
        attn_impl,
        head_dim=q.shape[2],
        kernel_size=kernel_size,
        stride=stride,
        **_call_site(q, k, v))
    return run_local_attention(decision, q, k, v, kernel_size, stride, scale)


def window_attention(q: Tensor,
                     k: Tensor,
                     v: Tensor,
                     bias: Tensor,
                     scale: float,
                     dropout_p: float = 0.,
                     attn_impl: str = 'auto') -> Tensor:
    """Swin window attention with an additive bias by the backend
    :func:`choose_backend` picks.

    Args:
        q, k, v: (B * nW, heads, N, D), q unscaled.
        bias: (nW or 1, heads, N, N) added to the logits.
        scale: factor applied to the queries.
        dropout_p: dropout on the attention weights.
        attn_impl: 'auto', 'sdpa' or 'reference'.

    Returns:
        Tensor: (B * nW, heads, N, D).
    """
    decision = choose_backend(
        WINDOW_ATTENTION,
        attn_impl,
        head_dim=q.shape[-1],
        **_call_site(q, k, v))
    return run_window_attention(decision, q, k, v, bias, scale, dropout_p)
