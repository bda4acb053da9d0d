"""ACmix's local attention through torch's FlexAttention.

Every query attends to all key pixels; a block mask keeps the
``kernel_size x kernel_size`` window around the query and a score modifier
adds ``log(multiplicity)``, the number of window offsets whose reflection
lands on the key (:func:`~acmix_mm.ops.reflection.reflection_multiplicity`),
so the result equals :func:`~acmix_mm.ops.reference.
local_attention_reference`. Compiled on CUDA; eager (forward only, as torch
has no CPU backward for it) on the CPU.
"""
import functools
import inspect
import math
import warnings
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .reflection import reflection_multiplicity

# (q, k, v, scale) -> out, for maps of one size.
LocalAttention = Callable[[Tensor, Tensor, Tensor, float], Tensor]


def local_attention_unavailable_reason(q: Tensor, k: Tensor, v: Tensor,
                                       kernel_size: int,
                                       stride: int) -> Optional[str]:
    """Why FlexAttention cannot compute this local attention, or None."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return (f'torch {torch.__version__} has no FlexAttention (it needs '
                'torch >= 2.5)')
    if q.device.type not in ('cuda', 'cpu'):
        return (f'FlexAttention runs on CUDA and CPU tensors here, got '
                f'{q.device.type}')
    if q.device.type == 'cpu' and any(t.requires_grad for t in (q, k, v)):
        return (f'FlexAttention has no backward on the CPU (torch '
                f'{torch.__version__}); use it for inference there')
    return None


@functools.lru_cache(maxsize=None)
def flex_attention_fn(compile: bool) -> Callable:
    """torch's flex_attention, compiled once per process if ``compile``."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False) if compile \
        else flex_attention


def create_block_mask(mask_mod: Callable, q_len: int, kv_len: int,
                      device: torch.device, compile: bool):
    """FlexAttention's block mask of ``mask_mod``, broadcast over batch and
    heads; compiled if ``compile``, so the q_len x kv_len mask is never
    materialised."""
    from torch.nn.attention import flex_attention as flex
    args = (mask_mod, None, None, q_len, kv_len)
    if not compile:
        return flex.create_block_mask(*args, device=device)
    if '_compile' in inspect.signature(flex.create_block_mask).parameters:
        with warnings.catch_warnings():  # newer torch deprecates _compile
            warnings.simplefilter('ignore', DeprecationWarning)
            return flex.create_block_mask(*args, device=device, _compile=True)
    return torch.compile(flex.create_block_mask)(*args, device=device)


@functools.lru_cache(maxsize=None)
def flex_local_attention(height: int, width: int, kernel_size: int,
                         stride: int, device: torch.device,
                         compile: bool) -> LocalAttention:
    """The local attention on H x W maps, its block mask built now (once per
    arguments).

    Returns:
        ``attention(q, k, v, scale)`` for (B, heads, D, H, W) q, k, v with
        the positional term in k, -> (B, heads, D, ceil(H / stride),
        ceil(W / stride)).
    """
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    half = kernel_size // 2

    def positions(q_idx: Tensor, kv_idx: Tensor) -> Tuple[Tensor, ...]:
        """(query row, query col, key row, key col) of token indices."""
        return (q_idx // out_w * stride, q_idx % out_w * stride,
                kv_idx // width, kv_idx % width)

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor,
                  kv_idx: Tensor) -> Tensor:
        query_y, query_x, key_y, key_x = positions(q_idx, kv_idx)
        multiplicity = (
            reflection_multiplicity(query_y, key_y, height, kernel_size) *
            reflection_multiplicity(query_x, key_x, width, kernel_size))
        return score + torch.log(multiplicity.to(score.dtype))

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor,
                 kv_idx: Tensor) -> Tensor:
        query_y, query_x, key_y, key_x = positions(q_idx, kv_idx)
        return (((query_y - key_y).abs() <= half)
                & ((query_x - key_x).abs() <= half))

    block_mask = create_block_mask(mask_mod, out_h * out_w, height * width,
                                   device, compile)
    attention = flex_attention_fn(compile)

    def tokens(maps: Tensor) -> Tensor:
        """(B, heads, D, h, w) -> (B, heads, h * w, D), contiguous."""
        return maps.flatten(3).transpose(2, 3).contiguous()

    def run(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        with warnings.catch_warnings():  # uncompiled on purpose
            warnings.filterwarnings('ignore', 'flex_attention called without')
            out = attention(
                tokens(q[..., ::stride, ::stride]),
                tokens(k),
                tokens(v),
                score_mod=score_mod,
                block_mask=block_mask,
                scale=scale)
        return out.transpose(2, 3).reshape(*q.shape[:3], out_h, out_w)

    return run


def local_attention(q: Tensor,
                    k: Tensor,
                    v: Tensor,
                    kernel_size: int,
                    stride: int = 1,
                    scale: float = 1.0) -> Tensor:
    """Same arguments and result as :func:`~acmix_mm.ops.reference.
    local_attention_reference`: (B, heads, D, H, W) q, k, v -> (B, heads, D,
    ceil(H / stride), ceil(W / stride)). Compiled on CUDA."""
    attention = flex_local_attention(*q.shape[-2:], kernel_size, stride,
                                     q.device, q.device.type == 'cuda')
    return attention(q, k, v, scale)
