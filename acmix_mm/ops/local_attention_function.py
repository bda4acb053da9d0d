"""Autograd wrapper of the fused (Triton) local attention."""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .local_attention_triton import (local_attention_backward,
                                     local_attention_forward)


class LocalAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, kernel_size, stride, scale)`` -> out.

    Same result as :func:`~acmix_mm.ops.local_attention_ref.
    local_attention_reference`; gradients flow to q, k and v. Saves q, k, v,
    out and the per-query log-sum-exp; the backward is deterministic.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor,
                kernel_size: int, stride: int, scale: float) -> Tensor:
        """(B, heads, D, H, W) q, k, v -> (B, heads, D, Hq, Wq) out."""
        out, lse = local_attention_forward(q, k, v, kernel_size, stride,
                                           scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernel_size, ctx.stride, ctx.scale = kernel_size, stride, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_out: Tensor
    ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], None,
               None, None]:
        """(B, heads, D, Hq, Wq) grad_out -> grads of q, k, v (None where
        not needed) and None for kernel_size, stride and scale."""
        q, k, v, out, lse = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        grad_q, grad_k, grad_v = local_attention_backward(
            grad_out, q, k, v, out, lse, ctx.kernel_size, ctx.stride,
            ctx.scale, need_grad_q=need_q, need_grad_kv=need_k or need_v)
        return (grad_q, grad_k if need_k else None,
                grad_v if need_v else None, None, None, None)


def local_attention_fused(q: Tensor, k: Tensor, v: Tensor, kernel_size: int,
                          stride: int = 1, scale: float = 1.0) -> Tensor:
    """Multi-head attention of each query over its reflected neighbourhood,
    fused in Triton kernels.

    Drop-in for :func:`~acmix_mm.ops.local_attention_ref.
    local_attention_reference` (same arguments and result).

    Args:
        q: (B, heads, D, H, W) queries at full resolution, unscaled.
        k: (B, heads, D, H, W) keys.
        v: (B, heads, D, H, W) values; any strides for all three.
        kernel_size: window size, 3, 5 or 7.
        stride: query stride, 1 or 2.
        scale: factor applied to the queries.

    Returns:
        Tensor: (B, heads, D, ceil(H / stride), ceil(W / stride)), dtype of v.
    """
    return LocalAttentionFunction.apply(q, k, v, kernel_size, stride, scale)
