"""Choice between the fused (Triton) and the reference local attention."""
import warnings
from typing import Optional

from torch import Tensor

from .local_attention_ref import local_attention_reference

ATTN_IMPLS = ('auto', 'fused', 'reference')


def check_attn_impl(attn_impl: str) -> str:
    """Return ``attn_impl`` if it is one of :data:`ATTN_IMPLS`."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got '
                         f'{attn_impl!r}')
    return attn_impl


def fused_unavailable_reason(q: Tensor, k: Tensor, v: Tensor,
                             kernel_size: int, stride: int) -> Optional[str]:
    """Why the fused kernels cannot run on these inputs, or None."""
    try:
        from .local_attention_triton import check_inputs
    except ImportError as error:
        return f'Triton is not available ({error})'
    try:
        check_inputs(q, k, v, kernel_size, stride)
    except ValueError as error:
        return str(error)
    return None


def resolve_attn_impl(attn_impl: str, q: Tensor, k: Tensor, v: Tensor,
                      kernel_size: int, stride: int) -> str:
    """'fused' or 'reference' for these inputs.

    'auto' picks the fused kernels for CUDA inputs they support (warning
    when it has to fall back) and the reference on the CPU; 'fused' raises
    RuntimeError with the reason if the kernels cannot run.
    """
    check_attn_impl(attn_impl)
    if attn_impl == 'reference' or (attn_impl == 'auto' and not q.is_cuda):
        return 'reference'
    reason = fused_unavailable_reason(q, k, v, kernel_size, stride)
    if reason is None:
        return 'fused'
    if attn_impl == 'fused':
        raise RuntimeError(f"attn_impl='fused' cannot run: {reason}")
    warnings.warn('ACmix local attention uses the reference implementation: '
                  f'{reason}')
    return 'reference'


def local_attention(q: Tensor, k: Tensor, v: Tensor, kernel_size: int,
                    stride: int = 1, scale: float = 1.0,
                    attn_impl: str = 'auto') -> Tensor:
    """ACmix local attention with the implementation chosen by
    :func:`resolve_attn_impl`. Arguments, shapes and results as
    :func:`local_attention_reference`."""
    if resolve_attn_impl(attn_impl, q, k, v, kernel_size,
                         stride) == 'fused':
        from .local_attention_function import local_attention_fused
        return local_attention_fused(q, k, v, kernel_size, stride, scale)
    return local_attention_reference(q, k, v, kernel_size, stride, scale)
