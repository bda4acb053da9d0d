"""Convert a reference Swin-ACmix checkpoint to ACmixSwinTransformer keys.

Usage:
    python tools/model_converters/acmix_swin_to_mm.py IN OUT

IN is a checkpoint written by the reference code (a dict whose 'model' entry
holds the weights), e.g. the released ImageNet ACmix-Swin-T/S. OUT can be used
by mmdet and mmseg configs as
``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` with
``convert_weights=False``.
"""
import argparse
import os
import pickle

import torch

from acmix_mm.models.utils import acmix_swin_converter, select_state_dict


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='reference checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted weights')
    parser.add_argument(
        '--trust-pickle', action='store_true',
        help='allow arbitrary pickled objects in SRC (only for files from a '
        'source you trust; needed when the checkpoint stores a yacs config)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite DST if it exists')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not os.path.isfile(args.src):
        raise SystemExit(f'error: checkpoint not found: {args.src}')
    if os.path.exists(args.dst) and not args.force:
        raise SystemExit(f'error: {args.dst} exists; pass --force to '
                         f'overwrite it')
    try:
        checkpoint = torch.load(args.src, map_location='cpu',
                                weights_only=not args.trust_pickle)
    except pickle.UnpicklingError as error:
        raise SystemExit(
            f'error: {args.src} holds objects other than tensors '
            f'({str(error).splitlines()[0]}). If you trust its source, rerun '
            f'with --trust-pickle.')
    except ModuleNotFoundError as error:
        raise SystemExit(
            f'error: unpickling {args.src} needs the module {error.name!r} '
            f'(e.g. the training config stored with the weights); install it '
            f'(pip install {error.name}) and rerun')
    state_dict = acmix_swin_converter(select_state_dict(checkpoint))
    if not any(k.startswith('stages.') for k in state_dict):
        raise SystemExit(f'error: {args.src} has no "layers.*" weights; it '
                         f'is not a reference Swin-ACmix checkpoint')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save({'state_dict': state_dict}, args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
