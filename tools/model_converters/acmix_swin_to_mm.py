"""Convert a reference Swin-ACmix checkpoint to ACmixSwinTransformer keys.

Usage:
    python tools/model_converters/acmix_swin_to_mm.py IN OUT

IN is a checkpoint written by the reference code (a dict whose 'model' entry
holds the weights), e.g. the released ImageNet ACmix-Swin-T/S. The script
builds the matching ACmixSwinTransformer, loads IN into it the way
``init_cfg=dict(type='Pretrained', checkpoint=IN)`` does, and writes the
weights it loaded. OUT loads into mmdet and mmseg configs without conversion
(the backbone also converts IN itself when loading it).
"""
import argparse
import os
import re
from collections import Counter

import torch

from acmix_mm.models import ACmixSwinTransformer
from acmix_mm.utils.checkpoint import (StateDict, UntrustedCheckpointError,
                                       pop_module_weights, read_weights,
                                       trust_local_checkpoints)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='reference checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted weights')
    parser.add_argument(
        '--trust-pickle',
        action='store_true',
        help='allow arbitrary pickled objects in SRC (only for files from a '
        'source you trust; needed when the checkpoint stores a yacs config)')
    parser.add_argument(
        '--force', action='store_true', help='overwrite DST if it exists')
    return parser.parse_args()


def reference_arch(weights: StateDict) -> dict:
    """ACmixSwinTransformer arguments for a reference state dict."""
    depths = Counter()
    for key in weights:
        match = re.match(r'layers\.(\d+)\.blocks\.(\d+)\.', key)
        if match:
            depths[int(match.group(1))] = max(depths[int(match.group(1))],
                                              int(match.group(2)) + 1)
    if not depths:
        raise ValueError('it has no "layers.*.blocks.*" weights; it is not a '
                         'reference Swin-ACmix checkpoint')
    stages = range(len(depths))
    tables = [
        weights[f'layers.{i}.blocks.0.attn.relative_position_bias_table']
        for i in stages
    ]
    projection = weights['patch_embed.proj.weight']
    embed_dims, in_channels, patch_size = projection.shape[:3]
    arch = dict(
        embed_dims=embed_dims,
        in_channels=in_channels,
        patch_size=patch_size,
        strides=(patch_size, ) + (2, ) * (len(depths) - 1),
        depths=tuple(depths[i] for i in stages),
        num_heads=tuple(table.shape[1] for table in tables),
        window_size=(round(tables[0].shape[0]**0.5) + 1) // 2,
        mlp_ratio=weights['layers.0.blocks.0.mlp.fc1.weight'].shape[0] /
        embed_dims,
        qkv_bias='layers.0.blocks.0.attn.qkv.bias' in weights,
        patch_norm='patch_embed.norm.weight' in weights)
    if 'absolute_pos_embed' in weights:
        side = round(weights['absolute_pos_embed'].shape[1]**0.5)
        arch.update(
            use_abs_pos_embed=True, pretrain_img_size=side * patch_size)
    return arch


def convert(src: str) -> StateDict:
    """The weights of ``src`` in ACmixSwinTransformer's layout, as its load
    hook produces them."""
    weights = pop_module_weights(read_weights(src), '')
    try:
        arch = reference_arch(weights)
    except (KeyError, ValueError) as error:
        raise ValueError(f'{src}: {error}') from None
    model = ACmixSwinTransformer(
        **arch, attn_impl='reference', drop_path_rate=0.)
    missing, _ = model.load_state_dict(weights, strict=False)
    return {
        key: value
        for key, value in model.state_dict().items() if key not in missing
    }


def main() -> None:
    args = parse_args()
    if os.path.exists(args.dst) and not args.force:
        raise SystemExit(f'error: {args.dst} exists; pass --force to '
                         f'overwrite it')
    if args.trust_pickle:
        trust_local_checkpoints()
    try:
        state_dict = convert(args.src)
    except UntrustedCheckpointError as error:
        raise SystemExit(f'error: {error}. If you trust its source, rerun '
                         f'with --trust-pickle')
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f'error: {error}')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save({'state_dict': state_dict}, args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
