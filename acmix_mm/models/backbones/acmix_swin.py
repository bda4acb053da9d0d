"""Swin Transformer with ACmix attention in every block (Swin-ACmix)."""
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed, PatchMerging
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import constant_init, trunc_normal_init
from mmengine.utils import to_2tuple
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from acmix_mm.registry import MODELS
from acmix_mm.utils.checkpoint import (check_weights, load_pretrained,
                                       pop_module_weights,
                                       pretrained_checkpoint)
from ..layers import ShiftWindowACmix
from ..utils import acmix_swin_converter
from .input_check import check_image_batch


class ACmixSwinBlock(BaseModule):
    """Swin block whose attention is :class:`ShiftWindowACmix`.

    Shapes:
        x (B, H * W, C), hw_shape (H, W) -> (B, H * W, C).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 window_size: int = 7,
                 shift: bool = False,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 conv_path: str = 'folded',
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ShiftWindowACmix(
            embed_dims=embed_dims,
            num_heads=num_heads,
            window_size=window_size,
            shift_size=window_size // 2 if shift else 0,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            attn_impl=attn_impl,
            conv_path=conv_path)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(
            embed_dims=embed_dims,
            feedforward_channels=feedforward_channels,
            num_fcs=2,
            ffn_drop=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate),
            act_cfg=act_cfg,
            add_identity=True)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:

        def inner_forward(x: Tensor) -> Tensor:
            x = x + self.attn(self.norm1(x), hw_shape)
            return self.ffn(self.norm2(x), identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner_forward, x, use_reentrant=False)
        return inner_forward(x)


class ACmixSwinStage(BaseModule):
    """One stage: ``depth`` blocks, every second one shifted, then an
    optional patch merging.

    Returns:
        tuple: (merged x, merged hw_shape, stage output x, its hw_shape).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 depth: int,
                 window_size: int = 7,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rates: Sequence[float] = (),
                 downsample: Optional[BaseModule] = None,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 conv_path: str = 'folded',
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        drop_path_rates = list(drop_path_rates) or [0.] * depth
        self.blocks = ModuleList([
            ACmixSwinBlock(
                embed_dims=embed_dims,
                num_heads=num_heads,
                feedforward_channels=feedforward_channels,
                window_size=window_size,
                shift=i % 2 == 1,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rates[i],
                act_cfg=act_cfg,
                norm_cfg=norm_cfg,
                with_cp=with_cp,
                attn_impl=attn_impl,
                conv_path=conv_path) for i in range(depth)
        ])
        self.downsample = downsample

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        x_down, down_hw_shape = self.downsample(x, hw_shape)
        return x_down, down_hw_shape, x, hw_shape


@MODELS.register_module()
class ACmixSwinTransformer(BaseModule):
    """Swin Transformer whose window attention is replaced by ACmix.

    Same arguments and outputs as mmdet's / mmseg's ``SwinTransformer``, so a
    config switches by changing ``type``; ``arch`` picks a preset.

    Every checkpoint (``Pretrained``, ``load_from``, ``resume``) passes its
    load hook: ``module.`` and ``backbone.`` prefixes are removed, the
    reference code's layout (e.g. the released ImageNet weights) is
    converted, relative position tables and absolute position embeddings of
    another window or image size are resized, and one that leaves blocks or
    stages without weights (output norms excepted) or has tensors of another
    shape is an error.

    Args:
        arch: 'tiny', 'small' or 'base'. ``embed_dims``, ``depths`` and
            ``num_heads``, when given, override the preset.
        pretrain_img_size: image size of pretraining (absolute position
            embedding size).
        in_channels: input image channels.
        embed_dims: channels of the first stage.
        patch_size: patch embedding size (= its stride).
        window_size: attention window size.
        mlp_ratio: FFN hidden channels / embed dims.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        strides: patch embedding stride, then patch merging strides.
        out_indices: stages whose (normed) features are returned.
        qkv_bias: learn a bias for q, k, v.
        qk_scale: overrides the attention scale.
        patch_norm: norm after patch embedding and merging.
        drop_rate: dropout rate.
        attn_drop_rate: attention dropout rate.
        drop_path_rate: stochastic depth rate, increasing linearly per block.
        use_abs_pos_embed: add a learned absolute position embedding.
        act_cfg: FFN activation.
        norm_cfg: norm layers.
        with_cp: gradient checkpointing per block.
        pretrained: deprecated; use ``init_cfg``.
        convert_weights: accepted for mmdet's ``SwinTransformer`` configs;
            checkpoints in the reference layout are recognised by their keys
            and converted whatever its value.
        frozen_stages: freeze the patch embedding (0) and stages 1..n.
        attn_impl: 'auto' (SDPA), 'sdpa' or 'reference'; see
            :class:`ShiftWindowACmix`.
        conv_path: 'folded' or 'as_written'; see :class:`ShiftWindowACmix`.
        allow_partial_checkpoint: load checkpoints that leave blocks or
            stages without weights, or have tensors of another shape; those
            keep their initialisation, with a warning.
        init_cfg: mmengine initialisation config, e.g.
            ``dict(type='Pretrained', checkpoint=...)``.

    Shapes:
        input (B, in_channels, H, W), any H, W -> list of
        (B, embed_dims * 2 ** i, ceil(H / (4 * 2 ** i)), ...) for i in
        out_indices.
    """

    arch_zoo: Dict[str, dict] = {
        'tiny':
        dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
        'small':
        dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
        'base':
        dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    }

    def __init__(self,
                 arch: str = 'tiny',
                 pretrain_img_size: Union[int, Tuple[int, int]] = 224,
                 in_channels: int = 3,
                 embed_dims: Optional[int] = None,
                 patch_size: int = 4,
                 window_size: int = 7,
                 mlp_ratio: float = 4,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 strides: Sequence[int] = (4, 2, 2, 2),
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 patch_norm: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 use_abs_pos_embed: bool = False,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 convert_weights: bool = False,
                 frozen_stages: int = -1,
                 attn_impl: str = 'auto',
                 conv_path: str = 'folded',
                 allow_partial_checkpoint: bool = False,
                 init_cfg=None) -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either init_cfg or pretrained, '
                                 'not both')
            warnings.warn('pretrained is deprecated, use init_cfg=dict('
                          "type='Pretrained', checkpoint=...)")
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

        if arch not in self.arch_zoo:
            raise ValueError(f'unknown arch {arch!r} for '
                             f'ACmixSwinTransformer; choose one of '
                             f'{sorted(self.arch_zoo)}')
        preset = self.arch_zoo[arch]
        embed_dims = embed_dims or preset['embed_dims']
        depths = tuple(depths or preset['depths'])
        num_heads = tuple(num_heads or preset['num_heads'])
        num_stages = len(depths)
        if len(num_heads) != num_stages or len(strides) != num_stages:
            raise ValueError(
                f'depths, num_heads and strides need one entry per stage; '
                f'got {len(depths)}, {len(num_heads)} and {len(strides)}')
        if strides[0] != patch_size:
            raise ValueError(f'strides[0] ({strides[0]}) must equal '
                             f'patch_size ({patch_size})')
        bad_indices = [i for i in out_indices if not 0 <= i < num_stages]
        if bad_indices:
            raise ValueError(f'out_indices {bad_indices} out of range for '
                             f'{num_stages} stages')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}')

        self.in_channels = in_channels
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.use_abs_pos_embed = use_abs_pos_embed
        self.allow_partial_checkpoint = allow_partial_checkpoint

        self.patch_embed = PatchEmbed(
            in_channels=in_channels,
            embed_dims=embed_dims,
            conv_type='Conv2d',
            kernel_size=patch_size,
            stride=strides[0],
            norm_cfg=norm_cfg if patch_norm else None)
        if use_abs_pos_embed:
            patch_h, patch_w = (
                s // patch_size for s in to_2tuple(pretrain_img_size))
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, embed_dims, patch_h, patch_w))
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        block_rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        self.num_features: List[int] = []
        channels = embed_dims
        for i, depth in enumerate(depths):
            downsample = None
            if i < num_stages - 1:
                downsample = PatchMerging(
                    in_channels=channels,
                    out_channels=2 * channels,
                    stride=strides[i + 1],
                    norm_cfg=norm_cfg if patch_norm else None)
            first = sum(depths[:i])
            self.stages.append(
                ACmixSwinStage(
                    embed_dims=channels,
                    num_heads=num_heads[i],
                    feedforward_channels=int(mlp_ratio * channels),
                    depth=depth,
                    window_size=window_size,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate,
                    drop_path_rates=block_rates[first:first + depth],
                    downsample=downsample,
                    act_cfg=act_cfg,
                    norm_cfg=norm_cfg,
                    with_cp=with_cp,
                    attn_impl=attn_impl,
                    conv_path=conv_path))
            self.num_features.append(channels)
            if downsample is not None:
                channels = downsample.out_channels

        for i in self.out_indices:
            self.add_module(
                f'norm{i}',
                build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._freeze_stages()
        self._register_load_state_dict_pre_hook(self._prepare_checkpoint)

    def train(self, mode: bool = True) -> 'ACmixSwinTransformer':
        """Switch mode while keeping frozen stages in eval mode."""
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            frozen = [self.patch_embed, self.drop_after_pos]
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
        else:
            frozen = []
        for i in range(self.frozen_stages):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def init_weights(self) -> None:
        """Load ``init_cfg``'s pretrained checkpoint, or initialise like the
        reference code (truncated normal linears, shift-kernel ACmix)."""
        checkpoint = pretrained_checkpoint(self.init_cfg)
        if checkpoint is not None:
            load_pretrained(self, checkpoint)
            self._is_init = True
            return
        if self.init_cfg is None:
            MMLogger.get_current_instance().warning(
                'No pretrained weights for ACmixSwinTransformer: training '
                'starts from scratch')
        if self.use_abs_pos_embed:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, (nn.LayerNorm, _BatchNorm)):
                constant_init(module, 1.0, bias=0.)
            elif isinstance(module, ShiftWindowACmix):
                module.init_weights()
        super().init_weights()

    def _prepare_checkpoint(self, state_dict: dict, prefix: str, *args,
                            **kwargs) -> None:
        """Load hook: strip wrapper prefixes, convert the reference layout,
        resize position tables and check the weights fit."""
        weights = pop_module_weights(state_dict, prefix)
        if any(key.startswith('layers.') for key in weights):
            weights = acmix_swin_converter(weights)
        self._resize_position_tables(weights)
        check_weights(
            self,
            weights,
            optional=[f'norm{i}' for i in self.out_indices],
            allow_partial=self.allow_partial_checkpoint)
        state_dict.update(
            (prefix + key, value) for key, value in weights.items())

    def _resize_position_tables(self, state_dict: dict) -> None:
        """Resize, in place, relative position tables and absolute position
        embeddings of a checkpoint trained with another window or image
        size."""
        own = self.state_dict()
        for key, value in list(state_dict.items()):
            target = own.get(key)
            if target is None or value.shape == target.shape:
                continue
            if key.endswith('relative_position_bias_table') and \
                    value.shape[1] == target.shape[1]:
                side, new_side = (
                    int(round(n**0.5))
                    for n in (value.shape[0], target.shape[0]))
                table = value.t().reshape(1, -1, side, side)
                table = F.interpolate(
                    table,
                    size=(new_side, new_side),
                    mode='bicubic',
                    align_corners=False)
                state_dict[key] = table.reshape(-1, new_side**2).t()
            elif key == 'absolute_pos_embed' and value.dim() == 3:
                side = int(round(value.shape[1]**0.5))
                grid = value.transpose(1, 2).reshape(1, -1, side, side)
                state_dict[key] = F.interpolate(
                    grid,
                    size=target.shape[-2:],
                    mode='bicubic',
                    align_corners=False)

    def forward(self, x: Tensor) -> List[Tensor]:
        check_image_batch(x, self.in_channels, type(self).__name__)
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            pos = self.absolute_pos_embed
            if pos.shape[-2:] != hw_shape:
                pos = F.interpolate(
                    pos, size=hw_shape, mode='bicubic', align_corners=False)
            x = x + pos.flatten(2).transpose(1, 2)
        x = self.drop_after_pos(x)

        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape, out, out_hw_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(
                    out.view(-1, *out_hw_shape,
                             self.num_features[i]).permute(0, 3, 1,
                                                           2).contiguous())
        return outs
