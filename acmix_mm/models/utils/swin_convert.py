"""Key conversion from the reference Swin-ACmix layout to
ACmixSwinTransformer."""
import re
from collections import OrderedDict
from typing import Dict

from torch import Tensor

# The reference concatenates the 2x2 neighbours as (0,0), (1,0), (0,1), (1,1);
# mmcv's PatchMerging unfolds them channel-major as (0,0), (0,1), (1,0), (1,1).
_UNFOLD_ORDER = [0, 2, 1, 3]


def _merge_reduction(weight: Tensor) -> Tensor:
    out_channels, in_channels = weight.shape
    weight = weight.reshape(out_channels, 4, in_channels // 4)
    return weight[:,
                  _UNFOLD_ORDER].transpose(1,
                                           2).reshape(out_channels,
                                                      in_channels)


def _merge_norm(param: Tensor) -> Tensor:
    return param.reshape(4, -1)[_UNFOLD_ORDER].transpose(0, 1).reshape(-1)


def acmix_swin_converter(state_dict: Dict[str, Tensor]) -> 'OrderedDict':
    """Rename and reorder a reference Swin-ACmix state dict (``model`` entry).

    - ``layers.i`` -> ``stages.i``; ``mlp.fc1/fc2`` -> ``ffn.layers.0.0/1``;
    - ``patch_embed.proj`` -> ``patch_embed.projection``;
    - patch-merging reduction and norm reordered for mmcv's ``PatchMerging``;
    - the final ``norm`` (applied to the last stage) becomes ``norm3``;
    - the classifier ``head``, ``relative_position_index`` and ``attn_mask``
      buffers are dropped (the backbone computes its own).
    """
    converted = OrderedDict()
    num_stages = 1 + max(
        (int(m.group(1))
         for m in map(re.compile(r'layers\.(\d+)\.').match, state_dict) if m),
        default=-1)
    for key, value in state_dict.items():
        if key.startswith('head.') or key.endswith(
            ('relative_position_index', 'attn_mask')):
            continue
        new_key = key
        if key.startswith('layers.'):
            new_key = 'stages.' + key[len('layers.'):]
            new_key = new_key.replace('.mlp.fc1.', '.ffn.layers.0.0.')
            new_key = new_key.replace('.mlp.fc2.', '.ffn.layers.1.')
            if '.downsample.reduction.' in key:
                value = _merge_reduction(value)
            elif '.downsample.norm.' in key:
                value = _merge_norm(value)
        elif key.startswith('patch_embed.proj.'):
            new_key = key.replace('patch_embed.proj.',
                                  'patch_embed.projection.')
        elif key.startswith('norm.') and num_stages:
            new_key = f'norm{num_stages - 1}.' + key[len('norm.'):]
        converted[new_key] = value
    return converted
