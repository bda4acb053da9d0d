"""Plain PyTorch reference of ACmix's convolution path."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_conv_path(qkv_maps: Tensor, fc_weight: Tensor,
                    fc_bias: Optional[Tensor], dep_conv_weight: Tensor,
                    stride: int = 1) -> Tensor:
    """ACmix convolution path: a light fc, then a grouped shift convolution.

    ``fc`` mixes the ``3 * heads`` projected maps into ``k ** 2`` maps,
    independently for every channel ``d`` of a head and every pixel; the
    result is laid out as channels ``d * k ** 2 + j`` and convolved by
    ``dep_conv`` (``k x k``, zero padding ``k // 2``, ``head_dim`` groups).

    Args:
        qkv_maps: (B, 3 * heads, head_dim, H, W) maps in the order
            [q heads, k heads, v heads]; may be a strided view.
        fc_weight: (k ** 2, 3 * heads, 1, 1).
        fc_bias: (k ** 2,) or None.
        dep_conv_weight: (out_channels, k ** 2, k, k).
        stride: convolution stride.

    Returns:
        Tensor: (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """
    batch, _, head_dim, height, width = qkv_maps.shape
    taps = fc_weight.shape[0]
    mixed = torch.einsum('ji,bidhw->bdjhw', fc_weight.flatten(1), qkv_maps)
    if fc_bias is not None:
        mixed = mixed + fc_bias.view(1, 1, taps, 1, 1)
    kernel = dep_conv_weight.shape[-1]
    return F.conv2d(mixed.reshape(batch, head_dim * taps, height, width),
                    dep_conv_weight, stride=stride, padding=kernel // 2,
                    groups=head_dim)
