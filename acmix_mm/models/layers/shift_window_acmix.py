"""ACmix for Swin Transformer: (shifted) window attention plus a conv path."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import build_dropout
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from acmix_mm.ops.conv_path import (fold_conv_path_bias, fold_conv_path_weight,
                                    folded_conv_path, shift_conv_path)
from acmix_mm.ops.dispatch import check_attn_impl
from acmix_mm.ops.softmax import softmax_fp32
from .init import reset_acmix_parameters

# Logit offset between tokens of different regions of a shifted window.
SHIFT_MASK_VALUE = -100.


def relative_position_index(window_size: int) -> Tensor:
    """(N, N) index into the ((2w - 1) ** 2, heads) bias table, N = w * w."""
    coords = torch.stack(torch.meshgrid(
        torch.arange(window_size), torch.arange(window_size),
        indexing='ij')).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]) + window_size - 1
    return relative[0] * (2 * window_size - 1) + relative[1]


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, window_size ** 2, C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size,
               width // window_size, window_size, channels)
    return x.transpose(2, 3).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: Tensor, window_size: int, height: int,
                   width: int) -> Tensor:
    """(B * nW, window_size ** 2, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size,
                     window_size, window_size, channels)
    return x.transpose(2, 3).reshape(-1, height, width, channels)


def shifted_window_mask(height: int, width: int, window_size: int,
                        shift_size: int, device: torch.device) -> Tensor:
    """(nW, N, N) additive mask keeping attention inside shifted regions."""
    region = torch.zeros(height, width, device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size),
              slice(-shift_size, None))
    for row, rows in enumerate(bounds):
        for col, cols in enumerate(bounds):
            region[rows, cols] = 3 * row + col
    windows = window_partition(region[None, :, :, None], window_size)[..., 0]
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * SHIFT_MASK_VALUE


class ShiftWindowACmix(BaseModule):
    """ACmix replacement of Swin's (shifted) window multi-head attention.

    On the padded, cyclically shifted map: ``qkv`` is computed once; the
    attention path is Swin window attention with relative position bias
    followed by ``proj``; the convolution path feeds the same q, k, v maps
    through ``fc`` (with bias) and the 3x3 grouped shift convolution
    ``dep_conv``; ``rate1 * attention + rate2 * convolution`` is shifted
    back and cropped.

    Following the reference, blocks whose feature map has
    ``min(H, W) <= window_size`` do not shift. Maps of any size are padded at
    the bottom and right to a multiple of the window, as in mmdet's
    ``ShiftWindowMSA``.

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        window_size: window side length.
        shift_size: cyclic shift of shifted blocks (0 for regular blocks).
        qkv_bias: learn a bias for q, k, v.
        qk_scale: overrides the attention scale ``head_dim ** -0.5``.
        attn_drop_rate: dropout on attention weights.
        proj_drop_rate: dropout on the combined output.
        dropout_layer: dropout applied last, e.g. DropPath.
        attn_impl: 'fused' (scaled_dot_product_attention windows, the
            convolution path folded into one grouped convolution),
            'reference' (as specified) or 'auto' (fused on CUDA, reference
            on the CPU). Same parameters and results either way.
        init_cfg: mmengine initialisation config.

    Shapes:
        query (B, H * W, C), hw_shape (H, W) -> (B, H * W, C).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 shift_size: int = 0,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 attn_drop_rate: float = 0.,
                 proj_drop_rate: float = 0.,
                 dropout_layer: Optional[dict] = None,
                 attn_impl: str = 'auto',
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible '
                             f'by num_heads ({num_heads})')
        if not 0 <= shift_size < window_size:
            raise ValueError(f'shift_size must be in [0, window_size), got '
                             f'{shift_size} for window_size {window_size}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dim = embed_dims // num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.scale = qk_scale or self.head_dim**-0.5
        self.attn_impl = check_attn_impl(attn_impl)

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))
        self.register_buffer('relative_position_index',
                             relative_position_index(window_size),
                             persistent=False)
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.fc = nn.Conv2d(3 * num_heads, 9, 1, bias=True)
        self.dep_conv = nn.Conv2d(9 * self.head_dim, embed_dims, 3,
                                  padding=1, groups=self.head_dim, bias=False)
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj_drop = nn.Dropout(proj_drop_rate)
        self.drop = build_dropout(dropout_layer) if dropout_layer else \
            nn.Identity()
        reset_acmix_parameters(self)

    def init_weights(self) -> None:
        super().init_weights()
        trunc_normal_(self.relative_position_bias_table, std=.02)
        reset_acmix_parameters(self)

    def forward(self, query: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        batch, length, channels = query.shape
        height, width = hw_shape
        if length != height * width:
            raise ValueError(f'query has {length} tokens, hw_shape {hw_shape} '
                             f'needs {height * width}')
        window = self.window_size
        shift = self.shift_size if min(height, width) > window else 0

        x = query.view(batch, height, width, channels)
        pad_b, pad_r = (-height) % window, (-width) % window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))

        if self.attn_impl == 'fused' or (self.attn_impl == 'auto'
                                         and x.is_cuda):
            x = self._forward_fused(x, shift)
        else:
            x = self._forward_reference(x, shift)
        x = self.proj_drop(x)

        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :height, :width].reshape(batch, length, channels)
        return self.drop(x)

    def _attention_bias(self, height: int, width: int, shift: int,
                        dtype: torch.dtype, device: torch.device) -> Tensor:
        """(nW or 1, heads, N, N) relative position bias plus shift mask."""
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)].view(tokens, tokens, -1)
        bias = bias.permute(2, 0, 1)[None]
        if shift:
            bias = bias + shifted_window_mask(height, width, self.window_size,
                                              shift, device)[:, None]
        return bias.to(dtype)

    def _forward_reference(self, x: Tensor, shift: int) -> Tensor:
        """(B, H, W, C) padded, shifted map -> (B, H, W, C), computed as
        specified: explicit softmax attention, fc then dep_conv."""
        batch, height, width, _ = x.shape
        window, tokens = self.window_size, self.window_size**2
        qkv = self.qkv(x)
        q, k, v = window_partition(qkv, window).view(
            -1, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).view(
            batch, -1, self.num_heads, tokens, tokens)
        attn = attn + self._attention_bias(height, width, shift, attn.dtype,
                                           attn.device)
        attn = softmax_fp32(attn.flatten(0, 1), dim=-1).to(v.dtype)
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(
            -1, tokens, self.embed_dims)
        out_att = window_reverse(self.proj(out), window, height, width)

        maps = qkv.view(batch, height, width, 3 * self.num_heads,
                        self.head_dim).permute(0, 3, 4, 1, 2)
        out_conv = shift_conv_path(maps, self.fc.weight, self.fc.bias,
                                   self.dep_conv.weight).permute(0, 2, 3, 1)
        return (self.rate1.to(out_att.dtype) * out_att +
                self.rate2.to(out_conv.dtype) * out_conv)

    def _forward_fused(self, x: Tensor, shift: int) -> Tensor:
        """Same result as :meth:`_forward_reference`, faster: q, k, v come
        out channel-major so that the convolution path is one grouped
        convolution on a channels-last view of them (fc folded into
        dep_conv), and the windows use scaled_dot_product_attention."""
        batch, height, width, _ = x.shape
        window, tokens = self.window_size, self.window_size**2
        order = (3 * self.num_heads, self.head_dim)
        weight = self.qkv.weight.view(*order, -1).transpose(0, 1).flatten(
            0, 1)
        bias = None if self.qkv.bias is None else \
            self.qkv.bias.view(order).t().flatten()
        qkv = F.linear(x, weight, bias)

        conv_weight = fold_conv_path_weight(self.fc.weight,
                                            self.dep_conv.weight)
        conv_bias = fold_conv_path_bias(self.fc.bias, self.dep_conv.weight,
                                        height, width)
        rate2 = self.rate2.to(conv_weight.dtype)
        out_conv = folded_conv_path(qkv.permute(0, 3, 1, 2),
                                    rate2 * conv_weight, rate2 * conv_bias)

        q, k, v = window_partition(qkv, window).view(
            -1, tokens, self.head_dim, 3, self.num_heads).permute(3, 0, 4, 1, 2)
        attn_bias = self._attention_bias(height, width, shift, q.dtype,
                                         q.device)
        if attn_bias.shape[0] > 1:
            attn_bias = attn_bias.repeat(batch, 1, 1, 1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, scale=self.scale,
            dropout_p=self.attn_drop.p if self.training else 0.)
        out = out.transpose(1, 2).reshape(-1, tokens, self.embed_dims)
        out_att = window_reverse(self.proj(out), window, height, width)
        return torch.addcmul(out_conv.permute(0, 2, 3, 1),
                             self.rate1.to(out_att.dtype), out_att)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, '
                f'shift_size={self.shift_size}')
