"""ResNet with ACmix in place of every bottleneck's 3x3 convolution."""
from typing import Sequence

from mmdet.models.backbones.resnet import Bottleneck, ResNet
from mmdet.models.layers import ResLayer
from mmengine.model.weight_init import constant_init
from torch import Tensor

from acmix_mm.registry import MODELS
from acmix_mm.utils.checkpoint import (check_weights, load_pretrained,
                                       pop_module_weights,
                                       pretrained_checkpoint)
from ..layers import ACmix
from .input_check import check_image_batch


class ACmixBottleneck(Bottleneck):
    """mmdet's Bottleneck whose ``conv2`` is an :class:`ACmix` layer.

    Args:
        inplanes: input channels.
        planes: ACmix width; the block outputs ``4 * planes`` channels.
        kernel_att: ACmix attention window.
        head: ACmix heads.
        kernel_conv: ACmix convolution kernel.
        attn_impl: ACmix attention backend, see :class:`ACmix`.
        conv_path: ACmix convolution path form, see :class:`ACmix`.
        **kwargs: the other arguments of mmdet's ``Bottleneck``.
    """

    def __init__(self,
                 inplanes: int,
                 planes: int,
                 kernel_att: int = 7,
                 head: int = 4,
                 kernel_conv: int = 3,
                 attn_impl: str = 'auto',
                 conv_path: str = 'folded',
                 **kwargs) -> None:
        super().__init__(inplanes, planes, **kwargs)
        if self.with_dcn:
            raise ValueError('ACmixResNet does not support dcn: ACmix '
                             'replaces the 3x3 convolution')
        self.conv2 = ACmix(
            planes,
            planes,
            kernel_att,
            head,
            kernel_conv,
            stride=self.conv2_stride,
            attn_impl=attn_impl,
            conv_path=conv_path)


@MODELS.register_module()
class ACmixResNet(ResNet):
    """ResNet-ACmix: torchvision-style ResNet with ACmix bottlenecks.

    Takes the arguments of mmdet's ``ResNet`` (in_channels, out_indices,
    frozen_stages, norm_cfg, norm_eval, with_cp, init_cfg, ...) plus the
    ACmix settings. Its state dict keys are those of the reference
    ResNet-ACmix without the classifier ``fc``, so a reference checkpoint
    loads through ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Every checkpoint (``Pretrained``, ``load_from``, ``resume``) passes its
    load hook: ``module.`` and ``backbone.`` prefixes are removed, and one
    that leaves blocks or stages without weights (e.g. ACmix-R26 weights in
    ACmix-R50) or has tensors of another shape is an error.

    Args:
        depth: 26, 38 or 50.
        kernel_att: ACmix attention window.
        head: ACmix heads.
        kernel_conv: ACmix convolution kernel.
        attn_impl: 'auto' (Triton kernels on GPU, reference on CPU),
            'triton', 'flex' or 'reference'; see :class:`ACmix`.
        conv_path: 'folded' or 'as_written'; see :class:`ACmix`.
        in_channels: input image channels.
        allow_partial_checkpoint: load checkpoints that leave blocks or
            stages without weights, or have tensors of another shape; those
            keep their initialisation, with a warning.
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

    def __init__(self,
                 depth: int,
                 kernel_att: int = 7,
                 head: int = 4,
                 kernel_conv: int = 3,
                 attn_impl: str = 'auto',
                 conv_path: str = 'folded',
                 in_channels: int = 3,
                 dilations: Sequence[int] = (1, 1, 1, 1),
                 allow_partial_checkpoint: bool = False,
                 **kwargs) -> None:
        if depth not in self.arch_settings:
            raise ValueError(f'unknown depth {depth!r} for ACmixResNet; '
                             f'choose one of {sorted(self.arch_settings)}')
        if any(d != 1 for d in dilations):
            raise ValueError(f'ACmix layers do not support dilation, got '
                             f'dilations={tuple(dilations)}')
        self.acmix_cfg = dict(
            kernel_att=kernel_att,
            head=head,
            kernel_conv=kernel_conv,
            attn_impl=attn_impl,
            conv_path=conv_path)
        self.in_channels = in_channels
        self.allow_partial_checkpoint = allow_partial_checkpoint
        super().__init__(
            depth, in_channels=in_channels, dilations=dilations, **kwargs)
        self._register_load_state_dict_pre_hook(self._prepare_checkpoint)

    def make_res_layer(self, **kwargs) -> ResLayer:
        return ResLayer(**self.acmix_cfg, **kwargs)

    def _prepare_checkpoint(self, state_dict: dict, prefix: str, *args,
                            **kwargs) -> None:
        """Load hook: strip wrapper prefixes and check the weights fit."""
        weights = pop_module_weights(state_dict, prefix)
        check_weights(
            self, weights, allow_partial=self.allow_partial_checkpoint)
        state_dict.update(
            (prefix + key, value) for key, value in weights.items())

    def init_weights(self) -> None:
        """Load a ``Pretrained`` checkpoint, or initialise like mmdet's ResNet
        with shift-kernel ACmix layers."""
        checkpoint = pretrained_checkpoint(self.init_cfg)
        if checkpoint is not None:
            load_pretrained(self, checkpoint)
            self._is_init = True
            return
        super().init_weights()
        if self.zero_init_residual:
            for module in self.modules():
                if isinstance(module, ACmixBottleneck):
                    constant_init(module.norm3, 0)

    def train(self, mode: bool = True) -> 'ACmixResNet':
        """mmdet's ``ResNet.train`` (frozen stages, norm_eval), returning
        self as ``nn.Module.train`` does, so ``model.eval()`` chains."""
        super().train(mode)
        return self

    def forward(self, x: Tensor) -> tuple:
        check_image_batch(x, self.in_channels, type(self).__name__)
        return super().forward(x)
