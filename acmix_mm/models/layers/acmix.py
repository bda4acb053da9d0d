"""ACmix layer, convolutional flavour (replaces a 3x3 convolution)."""
import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from acmix_mm.ops.conv_path import (check_conv_path, fold_conv_path_weight,
                                    folded_conv_path, shift_conv_path)
from acmix_mm.ops.dispatch import (LOCAL_ATTENTION, check_attn_impl,
                                   choose_backend, local_attention_inputs,
                                   run_local_attention)
from .init import reset_acmix_parameters


def position_grid(height: int, width: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """(1, 2, H, W) grid: channel 0 is x in [-1, 1] along W, 1 is y along H."""
    xs = torch.linspace(-1., 1., width, dtype=dtype, device=device)
    ys = torch.linspace(-1., 1., height, dtype=dtype, device=device)
    return torch.stack(
        [xs.expand(height, width), ys[:, None].expand(height, width)])[None]


class ACmix(BaseModule):
    """Self-attention and convolution sharing one set of 1x1 projections.

    ``out = rate1 * attention + rate2 * convolution`` where both paths reuse
    the q, k, v projections of the input: the attention path is multi-head
    attention over the ``kernel_att x kernel_att`` reflected neighbourhood of
    each query with a learned positional term; the convolution path mixes the
    ``3 * head`` projected maps with ``fc`` into ``kernel_conv ** 2`` maps and
    aggregates them with a grouped shift convolution ``dep_conv``.

    Parameter names and shapes are those of the reference implementation, so
    its state dicts load strictly.

    Args:
        in_planes: input channels.
        out_planes: output channels, divisible by ``head``.
        kernel_att: attention window size (odd).
        head: number of attention heads.
        kernel_conv: convolution kernel size (odd).
        stride: 1 or 2; the output has ``ceil(H / stride)`` rows.
        attn_impl: backend of the local attention: 'auto' (the fastest
            that can run: Triton on CUDA, the reference on the CPU),
            'triton', 'flex' or 'reference'; see :mod:`acmix_mm.ops.dispatch`.
        conv_path: form of the convolution path: 'folded' (fc folded into
            dep_conv, one grouped convolution) or 'as_written' (fc, then
            dep_conv). Same parameters and results for every choice.
        init_cfg: mmengine initialisation config.

    Shapes:
        input (B, in_planes, H, W) -> output (B, out_planes, ceil(H / s),
        ceil(W / s)) for any H, W >= 1.
    """

    def __init__(self,
                 in_planes: int,
                 out_planes: int,
                 kernel_att: int = 7,
                 head: int = 4,
                 kernel_conv: int = 3,
                 stride: int = 1,
                 attn_impl: str = 'auto',
                 conv_path: str = 'folded',
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if out_planes % head != 0:
            raise ValueError(f'out_planes ({out_planes}) must be divisible '
                             f'by head ({head})')
        for name, size in (('kernel_att', kernel_att), ('kernel_conv',
                                                        kernel_conv)):
            if size < 1 or size % 2 == 0:
                raise ValueError(f'{name} must be a positive odd number, '
                                 f'got {size}')
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.kernel_att = kernel_att
        self.head = head
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.head_dim = out_planes // head
        self.attn_impl = check_attn_impl(attn_impl, LOCAL_ATTENTION)
        self.conv_path = check_conv_path(conv_path)

        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel_conv * kernel_conv * self.head_dim,
            out_planes,
            kernel_conv,
            stride=stride,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=False)
        reset_acmix_parameters(self)

    def init_weights(self) -> None:
        super().init_weights()
        reset_acmix_parameters(self)

    def _project(self, x: Tensor) -> Tensor:
        """One 1x1 convolution for q, k and v, output channels ordered
        channel-major: (B, head_dim, 3, head, H, W)."""
        weight = torch.cat(
            [self.conv1.weight, self.conv2.weight, self.conv3.weight])
        bias = torch.cat([self.conv1.bias, self.conv2.bias, self.conv3.bias])
        order = (self.head_dim, 3 * self.head)
        weight = weight.view(order[::-1] + weight.shape[1:]).transpose(0, 1)
        bias = bias.view(order[::-1]).transpose(0, 1)
        qkv = F.conv2d(x, weight.flatten(0, 1), bias.flatten())
        return qkv.view(x.shape[0], self.head_dim, 3, self.head, *x.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        qkv = self._project(x)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        height, width = x.shape[-2:]
        grid = position_grid(height, width, qkv.dtype, qkv.device)
        position = self.conv_p(grid).to(qkv.dtype).unsqueeze(1)
        decision = choose_backend(
            LOCAL_ATTENTION, self.attn_impl, qkv.device.type, qkv.dtype,
            self.head_dim, self.kernel_att, self.stride,
            torch.is_grad_enabled()
            and (qkv.requires_grad or position.requires_grad))
        keys, values = local_attention_inputs(decision, k, v, position,
                                              self.stride)
        out_att = run_local_attention(decision, q, keys, values,
                                      self.kernel_att, self.stride,
                                      self.head_dim**-0.5).flatten(1, 2)
        if self.conv_path == 'folded':
            weight = fold_conv_path_weight(self.fc.weight,
                                           self.dep_conv.weight)
            out_conv = folded_conv_path(
                qkv.flatten(1, 3),
                self.rate2.to(weight.dtype) * weight,
                stride=self.stride)
            return torch.addcmul(out_conv, self.rate1.to(out_att.dtype),
                                 out_att)
        out_conv = shift_conv_path(
            qkv.flatten(2, 3).transpose(1, 2), self.fc.weight, None,
            self.dep_conv.weight, self.stride)
        return (self.rate1.to(out_att.dtype) * out_att +
                self.rate2.to(out_conv.dtype) * out_conv)

    def extra_repr(self) -> str:
        return (f'in_planes={self.in_planes}, out_planes={self.out_planes}, '
                f'kernel_att={self.kernel_att}, head={self.head}, '
                f'kernel_conv={self.kernel_conv}, stride={self.stride}, '
                f'attn_impl={self.attn_impl!r}, '
                f'conv_path={self.conv_path!r}')
