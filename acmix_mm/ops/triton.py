"""Autograd wrapper of the fused (Triton) local attention."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .reference import local_attention_reference
from .triton_kernels import (KernelError, local_attention_backward,
                                     local_attention_forward)

# Called with the error when a kernel fails and the reference takes over.
KernelErrorHandler = Callable[[KernelError], None]


class LocalAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, kernel_size, stride, scale[, on_kernel_error])``
    -> out.

    Same result as :func:`~acmix_mm.ops.reference.
    local_attention_reference`; gradients flow to q, k and v. Saves q, k, v,
    out and the per-query log-sum-exp; the backward is deterministic.

    If a kernel fails to compile or launch, :class:`KernelError` propagates
    when ``on_kernel_error`` is None; otherwise ``on_kernel_error(error)`` is
    called and the reference computes this forward (or backward) instead.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor,
                kernel_size: int, stride: int, scale: float,
                on_kernel_error: Optional[KernelErrorHandler] = None
                ) -> Tensor:
        """(B, heads, D, H, W) q, k, v -> (B, heads, D, Hq, Wq) out."""
        ctx.kernel_size, ctx.stride, ctx.scale = kernel_size, stride, scale
        ctx.on_kernel_error = on_kernel_error
        try:
            out, lse = local_attention_forward(q, k, v, kernel_size, stride,
                                               scale)
        except KernelError as error:
            if on_kernel_error is None:
                raise
            on_kernel_error(error)
            ctx.save_for_backward(q, k, v)
            return local_attention_reference(q, k, v, kernel_size, stride,
                                             scale)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_out: Tensor
    ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], None,
               None, None, None]:
        """(B, heads, D, Hq, Wq) grad_out -> grads of q, k, v (None where
        not needed) and None for the other arguments."""
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        q, k, v = ctx.saved_tensors[:3]
        grads = None
        if len(ctx.saved_tensors) == 5:
            out, lse = ctx.saved_tensors[3:]
            try:
                grads = local_attention_backward(
                    grad_out, q, k, v, out, lse, ctx.kernel_size, ctx.stride,
                    ctx.scale, need_grad_q=need_q,
                    need_grad_kv=need_k or need_v)
            except KernelError as error:
                if ctx.on_kernel_error is None:
                    raise
                ctx.on_kernel_error(error)
        if grads is None:
            grads = _reference_grads(grad_out, q, k, v, ctx.kernel_size,
                                     ctx.stride, ctx.scale)
        grad_q, grad_k, grad_v = grads
        return (grad_q if need_q else None, grad_k if need_k else None,
                grad_v if need_v else None, None, None, None, None)


def _reference_grads(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor,
                     kernel_size: int, stride: int,
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v through the reference, recomputed."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = local_attention_reference(*leaves, kernel_size, stride, scale)
        return torch.autograd.grad(out, leaves, grad_out)


def local_attention_fused(
        q: Tensor, k: Tensor, v: Tensor, kernel_size: int, stride: int = 1,
        scale: float = 1.0,
        on_kernel_error: Optional[KernelErrorHandler] = None) -> Tensor:
    """Multi-head attention of each query over its reflected neighbourhood,
    fused in Triton kernels.

    Drop-in for :func:`~acmix_mm.ops.reference.
    local_attention_reference` (same arguments and result).

    Args:
        q: (B, heads, D, H, W) queries at full resolution, unscaled.
        k: (B, heads, D, H, W) keys.
        v: (B, heads, D, H, W) values; any strides for all three.
        kernel_size: window size, 3, 5 or 7.
        stride: query stride, 1 or 2.
        scale: factor applied to the queries.
        on_kernel_error: None raises :class:`KernelError` if a kernel fails
            to compile or launch; a callable is told the error and the
            reference computes the result instead.

    Returns:
        Tensor: (B, heads, D, ceil(H / stride), ceil(W / stride)), dtype of v.
    """
    return LocalAttentionFunction.apply(q, k, v, kernel_size, stride, scale,
                                        on_kernel_error)
