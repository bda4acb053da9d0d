"""ACmix's convolution path: the reference and the folded form.

The path maps the ``3 * heads`` projected maps (q, k, v, each split into
heads of ``head_dim`` channels) through ``fc`` (a 1x1 mixing of the
``3 * heads`` maps into ``k ** 2`` maps, per channel and pixel) and the
grouped shift convolution ``dep_conv``. Both are linear, so they fold into one
grouped ``k x k`` convolution on the projected maps ordered channel-major
``(head_dim, 3 * heads)``, plus, if ``fc`` has a bias, a bias map that is
constant except at the border (``dep_conv`` zero-pads its input, bias
included).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Forms of the convolution path a layer computes, both exact: 'folded' (one
# grouped convolution, :func:`folded_conv_path`) and 'as_written' (fc then
# dep_conv, :func:`shift_conv_path`).
CONV_PATHS = ('folded', 'as_written')


def check_conv_path(conv_path: str) -> str:
    """Return ``conv_path`` if it is one of :data:`CONV_PATHS`."""
    if conv_path not in CONV_PATHS:
        raise ValueError(f'conv_path must be one of {CONV_PATHS}, got '
                         f'{conv_path!r}')
    return conv_path


def shift_conv_path(qkv_maps: Tensor,
                    fc_weight: Tensor,
                    fc_bias: Optional[Tensor],
                    dep_conv_weight: Tensor,
                    stride: int = 1) -> Tensor:
    """Reference convolution path, computed as written.

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
    return F.conv2d(
        mixed.reshape(batch, head_dim * taps, height, width),
        dep_conv_weight,
        stride=stride,
        padding=kernel // 2,
        groups=head_dim)


def fold_conv_path_weight(fc_weight: Tensor,
                          dep_conv_weight: Tensor) -> Tensor:
    """``fc`` followed by ``dep_conv`` as one weight.

    Returns:
        Tensor: (out_channels, 3 * heads, k, k), ``W[o, i] = sum_j
        dep_conv[o, j] * fc[j, i]``, for a convolution with ``head_dim``
        groups over maps ordered ``(head_dim, 3 * heads)``.
    """
    return torch.einsum('ojuv,ji->oiuv', dep_conv_weight, fc_weight.flatten(1))


def fold_conv_path_bias(fc_bias: Tensor,
                        dep_conv_weight: Tensor,
                        height: int,
                        width: int,
                        stride: int = 1) -> Tensor:
    """What ``fc``'s bias adds to the output: the taps of ``dep_conv`` that
    fall inside the image, summed.

    Returns:
        Tensor: (1, out_channels, ceil(H / stride), ceil(W / stride)).
    """
    kernel = torch.einsum('ojuv,j->ouv', dep_conv_weight, fc_bias)[:, None]
    ones = kernel.new_ones(1, 1, height, width)
    return F.conv2d(ones, kernel, stride=stride, padding=kernel.shape[-1] // 2)


def folded_conv_path(maps: Tensor,
                     folded_weight: Tensor,
                     folded_bias: Optional[Tensor] = None,
                     stride: int = 1) -> Tensor:
    """Convolution path as one grouped convolution.

    Args:
        maps: (B, head_dim * 3 * heads, H, W) projected maps ordered
            channel-major, channel ``d * 3 * heads + i`` being channel ``d``
            of map ``i``; any memory format (e.g. a channels-last view).
        folded_weight: from :func:`fold_conv_path_weight`.
        folded_bias: from :func:`fold_conv_path_bias`, or None.
        stride: convolution stride.

    Returns:
        Tensor: (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """
    groups = maps.shape[1] // folded_weight.shape[1]
    out = F.conv2d(
        maps,
        folded_weight,
        stride=stride,
        padding=folded_weight.shape[-1] // 2,
        groups=groups)
    return out if folded_bias is None else out + folded_bias
