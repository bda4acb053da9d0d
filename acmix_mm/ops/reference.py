"""Plain PyTorch references of ACmix's attentions: the local
(sliding-window) attention of the convolutional flavour and the window
attention of the Swin flavour, computed as specified."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .reflection import reflect_index
from .softmax import softmax_fp32


def local_attention_reference(q: Tensor,
                              k: Tensor,
                              v: Tensor,
                              kernel_size: int,
                              stride: int = 1,
                              scale: float = 1.0) -> Tensor:
    """Multi-head attention of each query over its reflected neighbourhood.

    Query positions are ``(stride * i, stride * j)``; each attends to the
    ``kernel_size ** 2`` keys of the window centred on it, positions outside
    the map taken by reflection (:func:`reflect_index`). Softmax runs in at
    least float32.

    Args:
        q: (B, heads, D, H, W) queries at full resolution, unscaled.
        k: (B, heads, D, H, W) keys (with any positional term folded in).
        v: (B, heads, D, H, W) values.
        kernel_size: odd window size.
        stride: query stride.
        scale: factor applied to the queries.

    Returns:
        Tensor: (B, heads, D, ceil(H / stride), ceil(W / stride)), dtype of v.
    """
    height, width = k.shape[-2:]
    pad = kernel_size // 2
    rows = reflect_index(height, pad, k.device)
    cols = reflect_index(width, pad, k.device)
    k_padded = k.index_select(-2, rows).index_select(-1, cols)
    v_padded = v.index_select(-2, rows).index_select(-1, cols)

    queries = q[..., ::stride, ::stride] * scale
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1

    def window_view(padded: Tensor, dy: int, dx: int) -> Tensor:
        return padded[..., dy:dy + span_h:stride, dx:dx + span_w:stride]

    offsets = [(dy, dx) for dy in range(kernel_size)
               for dx in range(kernel_size)]
    logits = torch.stack([(queries * window_view(k_padded, dy, dx)).sum(2)
                          for dy, dx in offsets],
                         dim=2)
    weights = softmax_fp32(logits, dim=2).to(v.dtype)

    out = torch.zeros_like(queries, dtype=v.dtype)
    for index, (dy, dx) in enumerate(offsets):
        out.addcmul_(weights[:, :, index:index + 1],
                     window_view(v_padded, dy, dx))
    return out


def window_attention_reference(q: Tensor,
                               k: Tensor,
                               v: Tensor,
                               bias: Tensor,
                               scale: float,
                               dropout_p: float = 0.) -> Tensor:
    """Multi-head attention inside each window with an additive bias,
    explicit softmax in at least float32.

    Args:
        q: (B * nW, heads, N, D) queries of the N tokens of each window,
            unscaled; windows of one image consecutive.
        k: (B * nW, heads, N, D) keys.
        v: (B * nW, heads, N, D) values.
        bias: (nW or 1, heads, N, N) added to the logits (relative position
            bias plus, in shifted windows, the region mask).
        scale: factor applied to the queries.
        dropout_p: dropout on the attention weights (0 at inference).

    Returns:
        Tensor: (B * nW, heads, N, D), dtype of v.
    """
    heads, tokens = q.shape[1:3]
    attn = ((q * scale) @ k.transpose(-2, -1)).view(-1, bias.shape[0], heads,
                                                    tokens, tokens)
    attn = softmax_fp32((attn + bias).flatten(0, 1), dim=-1).to(v.dtype)
    if dropout_p:
        attn = F.dropout(attn, dropout_p)
    return attn @ v
