"""ResNet with ACmix in place of every bottleneck's 3x3 convolution."""
from typing import Sequence

import torch.utils.checkpoint as cp
from mmengine.model.weight_init import constant_init
from mmdet.models.backbones.resnet import Bottleneck, ResNet
from mmdet.models.layers import ResLayer
from torch import Tensor

from acmix_mm.ops.dispatch import check_attn_impl
from acmix_mm.registry import MODELS
from ..layers import ACmix
from ..utils import load_backbone_checkpoint
from .input_check import check_image_batch


class ACmixBottleneck(Bottleneck):
    """mmdet's Bottleneck whose ``conv2`` is an :class:`ACmix` layer.

    Args:
        inplanes: input channels.
        planes: ACmix width; the block outputs ``4 * planes`` channels.
        kernel_att: ACmix attention window.
        head: ACmix heads.
        kernel_conv: ACmix convolution kernel.
        attn_impl: ACmix implementation, see :class:`ACmix`.
        **kwargs: the other arguments of mmdet's ``Bottleneck``.
    """

    def __init__(self, inplanes: int, planes: int, kernel_att: int = 7,
                 head: int = 4, kernel_conv: int = 3,
                 attn_impl: str = 'auto', **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)
        if self.with_dcn:
            raise ValueError('ACmixResNet does not support dcn: ACmix '
                             'replaces the 3x3 convolution')
        if self.dilation != 1:
            raise ValueError(f'ACmix layers do not support dilation, got '
                             f'{self.dilation}')
        self.conv2 = ACmix(planes, planes, kernel_att, head, kernel_conv,
                           stride=self.conv2_stride, attn_impl=attn_impl)

    def forward(self, x: Tensor) -> Tensor:

        def inner_forward(x: Tensor) -> Tensor:
            out = self.relu(self.norm1(self.conv1(x)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv1_plugin_names)
            out = self.relu(self.norm2(self.conv2(out)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv2_plugin_names)
            out = self.norm3(self.conv3(out))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv3_plugin_names)
            identity = x if self.downsample is None else self.downsample(x)
            return out + identity

        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(inner_forward, x, use_reentrant=False)
        else:
            out = inner_forward(x)
        return self.relu(out)


@MODELS.register_module()
class ACmixResNet(ResNet):
    """ResNet-ACmix: torchvision-style ResNet with ACmix bottlenecks.

    Takes the arguments of mmdet's ``ResNet`` (in_channels, out_indices,
    frozen_stages, norm_cfg, norm_eval, with_cp, init_cfg, ...) plus the
    ACmix settings. Its state dict keys are those of the reference
    ResNet-ACmix without the classifier ``fc``, so a reference checkpoint
    loads through ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Args:
        depth: 26, 38 or 50.
        kernel_att: ACmix attention window.
        head: ACmix heads.
        kernel_conv: ACmix convolution kernel.
        attn_impl: 'auto' (fused CUDA kernels on GPU, reference on CPU),
            'fused' or 'reference'; see :class:`ACmix`.
        in_channels: input image channels.
        **kwargs: the other arguments of mmdet's ``ResNet``.

    Shapes:
        input (B, in_channels, H, W) -> tuple of
        (B, 256 * 2 ** i, ceil(H / 2 ** (i + 2)), ceil(W / 2 ** (i + 2)))
        for i in out_indices.
    """

    arch_settings = {
        26: (ACmixBottleneck, (1, 2, 4, 1)),
        38: (ACmixBottleneck, (2, 3, 5, 2)),
        50: (ACmixBottleneck, (3, 4, 6, 3)),
    }

    def __init__(self, depth: int, kernel_att: int = 7, head: int = 4,
                 kernel_conv: int = 3, attn_impl: str = 'auto',
                 in_channels: int = 3,
                 dilations: Sequence[int] = (1, 1, 1, 1), **kwargs) -> None:
        if depth not in self.arch_settings:
            raise ValueError(f'unknown depth {depth!r} for ACmixResNet; '
                             f'choose one of {sorted(self.arch_settings)}')
        if any(d != 1 for d in dilations):
            raise ValueError(f'ACmix layers do not support dilation, got '
                             f'dilations={tuple(dilations)}')
        self.acmix_cfg = dict(kernel_att=kernel_att, head=head,
                              kernel_conv=kernel_conv,
                              attn_impl=check_attn_impl(attn_impl))
        self.in_channels = in_channels
        super().__init__(depth, in_channels=in_channels, dilations=dilations,
                         **kwargs)

    def make_res_layer(self, **kwargs) -> ResLayer:
        return ResLayer(**self.acmix_cfg, **kwargs)

    def init_weights(self) -> None:
        """Load a ``Pretrained`` checkpoint, or initialise like mmdet's ResNet
        with shift-kernel ACmix layers."""
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            load_backbone_checkpoint(self, self.init_cfg['checkpoint'])
            self._is_init = True
            return
        super().init_weights()
        if self.zero_init_residual:
            for module in self.modules():
                if isinstance(module, ACmixBottleneck):
                    constant_init(module.norm3, 0)

    def train(self, mode: bool = True) -> 'ACmixResNet':
        """Switch mode, keeping frozen stages (and norms if norm_eval) in
        eval mode."""
        super().train(mode)
        return self

    def forward(self, x: Tensor) -> tuple:
        check_image_batch(x, self.in_channels, type(self).__name__)
        return super().forward(x)
