"""Choice between the fused (Triton) and the reference local attention.

``attn_impl='auto'`` runs the fused kernels on CUDA tensors wherever they
can run and the reference elsewhere; when the kernels cannot run (Triton
missing or too old, unsupported inputs, a kernel that fails to compile or
launch) it falls back to the reference and warns once per reason.
``'fused'`` raises a RuntimeError naming the reason instead; ``'reference'``
always runs the reference.
"""
import functools
import re
import warnings
from typing import Dict, Optional, Set

from torch import Tensor

from .reference import local_attention_reference

ATTN_IMPLS = ('auto', 'fused', 'reference')
# The oldest Triton the kernels compile with (torch 2.1's).
MIN_TRITON_VERSION = (2, 1)

# Kernel variants that failed to compile or launch, with the reason: 'auto'
# does not try them again.
_FAILED_VARIANTS: Dict[tuple, str] = {}
_WARNED: Set[str] = set()


def check_attn_impl(attn_impl: str) -> str:
    """Return ``attn_impl`` if it is one of :data:`ATTN_IMPLS`."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got '
                         f'{attn_impl!r}')
    return attn_impl


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


def fused_unavailable_reason(q: Tensor, k: Tensor, v: Tensor,
                             kernel_size: int, stride: int) -> Optional[str]:
    """Why the fused kernels cannot run on these inputs, or None."""
    reason = triton_unavailable_reason()
    if reason is not None:
        return reason
    from .triton_kernels import check_inputs, variant_key
    try:
        check_inputs(q, k, v, kernel_size, stride)
    except ValueError as error:
        return str(error)
    return _FAILED_VARIANTS.get(variant_key(q, kernel_size, stride))


def fused_preferred(q: Tensor) -> bool:
    """Whether 'auto' tries the fused kernels: for CUDA tensors."""
    return q.is_cuda


def warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time only."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def _fall_back(reason: str) -> None:
    warn_once(f'ACmix local attention falls back to the reference '
              f'implementation: {reason}')


def _record_kernel_error(error: RuntimeError) -> None:
    """'auto' handler of a failed kernel (a ``KernelError``): warn, and never
    try its variant again."""
    _FAILED_VARIANTS[error.variant] = str(error)
    _fall_back(str(error))


def resolve_attn_impl(attn_impl: str, q: Tensor, k: Tensor, v: Tensor,
                      kernel_size: int, stride: int) -> str:
    """'fused' or 'reference' for these inputs.

    'auto' picks the fused kernels for CUDA inputs they support (warning
    once per reason when it has to fall back) and the reference on the
    CPU; 'fused' raises RuntimeError with the reason if the kernels cannot
    run.
    """
    check_attn_impl(attn_impl)
    if attn_impl == 'reference' or (attn_impl == 'auto'
                                    and not fused_preferred(q)):
        return 'reference'
    reason = fused_unavailable_reason(q, k, v, kernel_size, stride)
    if reason is None:
        return 'fused'
    if attn_impl == 'fused':
        raise RuntimeError(f"attn_impl='fused' cannot run: {reason}")
    _fall_back(reason)
    return 'reference'


def local_attention(q: Tensor, k: Tensor, v: Tensor, kernel_size: int,
                    stride: int = 1, scale: float = 1.0,
                    attn_impl: str = 'auto') -> Tensor:
    """ACmix local attention with the implementation chosen by
    :func:`resolve_attn_impl`. Arguments, shapes and results as
    :func:`local_attention_reference`.

    A fused kernel that fails to compile or launch raises a RuntimeError
    under 'fused'; under 'auto' the reference takes over (from then on for
    that kernel variant) with one warning.
    """
    if resolve_attn_impl(attn_impl, q, k, v, kernel_size,
                         stride) == 'fused':
        from .triton import local_attention_fused
        handler = _record_kernel_error if attn_impl == 'auto' else None
        return local_attention_fused(q, k, v, kernel_size, stride, scale,
                                     handler)
    return local_attention_reference(q, k, v, kernel_size, stride, scale)
