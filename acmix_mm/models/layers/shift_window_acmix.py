"""ACmix for Swin Transformer: (shifted) window attention plus a conv path."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import build_dropout
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from acmix_mm.ops.conv_path import (check_conv_path, fold_conv_path_bias,
                                    fold_conv_path_weight, folded_conv_path,
                                    shift_conv_path)
from acmix_mm.ops.dispatch import (WINDOW_ATTENTION, check_attn_impl,
                                   choose_backend, run_window_attention)
from .init import reset_acmix_parameters

# Logit offset between tokens of different regions of a shifted window.
SHIFT_MASK_VALUE = -100.


def relative_position_index(window_size: int) -> Tensor:
    """(N, N) index into the ((2w - 1) ** 2, heads) bias table, N = w * w."""
    coords = torch.stack(
        torch.meshgrid(
            torch.arange(window_size),
            torch.arange(window_size),
            indexing='ij')).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]) + window_size - 1
    return relative[0] * (2 * window_size - 1) + relative[1]


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, window_size ** 2, C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size,
               window_size, channels)
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
        attn_impl: backend of the window attention: 'auto' (the fastest
            that can run: 'sdpa' everywhere), 'sdpa'
            (scaled_dot_product_attention) or 'reference' (explicit softmax);
            see :mod:`acmix_mm.ops.dispatch`.
        conv_path: form of the convolution path: 'folded' (q, k, v projected
            channel-major, fc folded into dep_conv: one grouped convolution)
            or 'as_written' (fc, then dep_conv). Same parameters and results
            for every choice.
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
                 conv_path: str = 'folded',
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
        self.attn_impl = check_attn_impl(attn_impl, WINDOW_ATTENTION)
        self.conv_path = check_conv_path(conv_path)

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1)**2, num_heads))
        self.register_buffer(
            'relative_position_index',
            relative_position_index(window_size),
            persistent=False)
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.fc = nn.Conv2d(3 * num_heads, 9, 1, bias=True)
        self.dep_conv = nn.Conv2d(
            9 * self.head_dim,
            embed_dims,
            3,
            padding=1,
            groups=self.head_dim,
            bias=False)
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

        x = self.proj_drop(self._forward_shifted(x, shift))

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

    def _project(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, 3 * C) q, k, v: ordered (3, heads,
        head_dim) as specified for 'as_written', channel-major (head_dim, 3,
        heads) for 'folded', whose convolution path then is one grouped
        convolution on a channels-last view of them."""
        if self.conv_path == 'as_written':
            return self.qkv(x)
        order = (3 * self.num_heads, self.head_dim)
        weight = self.qkv.weight.view(*order, -1).transpose(0, 1).flatten(0, 1)
        bias = None if self.qkv.bias is None else \
            self.qkv.bias.view(order).t().flatten()
        return F.linear(x, weight, bias)

    def _conv_path(self, qkv: Tensor) -> Tensor:
        """(B, H, W, 3 * C) from :meth:`_project` -> (B, H, W, C) convolution
        path, times rate2 in the folded form."""
        batch, height, width, _ = qkv.shape
        if self.conv_path == 'as_written':
            maps = qkv.view(batch, height, width, 3 * self.num_heads,
                            self.head_dim).permute(0, 3, 4, 1, 2)
            return shift_conv_path(maps, self.fc.weight, self.fc.bias,
                                   self.dep_conv.weight).permute(0, 2, 3, 1)
        weight = fold_conv_path_weight(self.fc.weight, self.dep_conv.weight)
        bias = fold_conv_path_bias(self.fc.bias, self.dep_conv.weight, height,
                                   width)
        rate2 = self.rate2.to(weight.dtype)
        return folded_conv_path(
            qkv.permute(0, 3, 1, 2), rate2 * weight,
            rate2 * bias).permute(0, 2, 3, 1)

    def _forward_shifted(self, x: Tensor, shift: int) -> Tensor:
        """(B, H, W, C) padded, shifted map -> (B, H, W, C): window
        attention by the chosen backend, then proj, plus the convolution
        path."""
        batch, height, width, _ = x.shape
        window, tokens = self.window_size, self.window_size**2
        qkv = self._project(x)
        out_conv = self._conv_path(qkv)

        windows = window_partition(qkv, window)
        if self.conv_path == 'as_written':
            q, k, v = windows.view(-1, tokens, 3, self.num_heads,
                                   self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = windows.view(-1, tokens, self.head_dim, 3,
                                   self.num_heads).permute(3, 0, 4, 1, 2)
        decision = choose_backend(
            WINDOW_ATTENTION,
            self.attn_impl,
            qkv.device.type,
            qkv.dtype,
            self.head_dim,
            requires_grad=torch.is_grad_enabled() and qkv.requires_grad)
        out = run_window_attention(
            decision, q, k, v,
            self._attention_bias(height, width, shift, q.dtype, q.device),
            self.scale, self.attn_drop.p if self.training else 0.)
        out = out.transpose(1, 2).reshape(-1, tokens, self.embed_dims)
        out_att = window_reverse(self.proj(out), window, height, width)
        if self.conv_path == 'as_written':
            return (self.rate1.to(out_att.dtype) * out_att +
                    self.rate2.to(out_conv.dtype) * out_conv)
        return torch.addcmul(out_conv, self.rate1.to(out_att.dtype), out_att)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, '
                f'shift_size={self.shift_size}, '
                f'attn_impl={self.attn_impl!r}, '
                f'conv_path={self.conv_path!r}')
