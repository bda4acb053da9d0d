"""Window attention through
``torch.nn.functional.scaled_dot_product_attention`` (flash /
memory-efficient / math kernels chosen by torch)."""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor


def window_attention_unavailable_reason(q: Tensor, k: Tensor,
                                        v: Tensor) -> Optional[str]:
    """None: torch >= 2.1 (the oldest this package supports) has
    ``scaled_dot_product_attention`` with ``scale`` on every device."""
    return None


def window_attention(q: Tensor,
                     k: Tensor,
                     v: Tensor,
                     bias: Tensor,
                     scale: float,
                     dropout_p: float = 0.) -> Tensor:
    """Same arguments and result as :func:`~acmix_mm.ops.reference.
    window_attention_reference`; the bias is repeated per image when it
    differs between windows.

    Args:
        q, k, v: (B * nW, heads, N, D).
        bias: (nW or 1, heads, N, N) additive, in the dtype of q.
        scale: factor applied to the queries.
        dropout_p: dropout on the attention weights (0 at inference).

    Returns:
        Tensor: (B * nW, heads, N, D).
    """
    if bias.shape[0] > 1:
        bias = bias.repeat(q.shape[0] // bias.shape[0], 1, 1, 1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
