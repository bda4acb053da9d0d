"""Build every config's full model and run it once on synthetic images.

For each config: parameter counts, the time of one training step (forward,
backward and optimiser step with the config's optim_wrapper) and of one
prediction on a batch of random images with random annotations, and the time
of one backbone forward+backward at --backbone-input.

Usage:
    python tools/analysis_tools/check_configs.py [CONFIG ...]
"""
import argparse
import statistics
import time
from pathlib import Path
from typing import List

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from acmix_mm.testing import (build_model, num_classes_of, synthetic_batch,
                              train_and_predict)

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'configs',
        nargs='*',
        help='config files (default: every file in configs/)')
    parser.add_argument('--num-images', type=int, default=2)
    parser.add_argument(
        '--image-size',
        type=int,
        nargs=2,
        default=(160, 224),
        metavar=('H', 'W'))
    parser.add_argument(
        '--backbone-input',
        type=int,
        nargs=4,
        default=(2, 3, 224, 224),
        metavar=('B', 'C', 'H', 'W'))
    parser.add_argument(
        '--repeats',
        type=int,
        default=3,
        help='timed backbone runs (median reported)')
    return parser.parse_args()


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def backbone_seconds(backbone: torch.nn.Module, shape: List[int],
                     repeats: int) -> float:
    """Median wall time of a backbone forward+backward (train mode), after
    one warm-up run."""
    backbone.train()
    images = torch.randn(*shape)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        outs = backbone(images)
        sum(o.float().mean() for o in outs).backward()
        times.append(time.perf_counter() - start)
    backbone.zero_grad()
    return statistics.median(times[1:])


def main() -> None:
    args = parse_args()
    MMLogger.get_instance('check_configs', log_level='WARNING')
    paths = args.configs or sorted(
        str(p.relative_to(REPO)) for p in REPO.glob('configs/*/*.py'))
    torch.manual_seed(0)
    header = (f'{"config":<62} {"backbone":>9} {"model":>7} {"bb f+b":>7} '
              f'{"train":>7} {"predict":>8}  loss')
    rows = []
    for path in paths:
        cfg = Config.fromfile(
            str(REPO / path) if not Path(path).exists() else path)
        if 'decode_head' in cfg.model:
            cfg.model.data_preprocessor.size = tuple(args.image_size)
        model = build_model(cfg)
        batch = synthetic_batch(cfg.default_scope, args.num_images,
                                tuple(args.image_size), num_classes_of(cfg))
        bb_seconds = backbone_seconds(model.backbone, args.backbone_input,
                                      args.repeats)
        result = train_and_predict(model, cfg, batch)
        rows.append(f'{Path(path).name:<62} {count(model.backbone):>8.2f}M '
                    f'{count(model):>6.2f}M {bb_seconds:>6.2f}s '
                    f'{result["train_seconds"]:>6.2f}s '
                    f'{result["predict_seconds"]:>7.2f}s  '
                    f'{result["losses"]["loss"]:.3f}')
        print(rows[-1], flush=True)
    print()
    print(f'{args.num_images} synthetic images of {args.image_size[0]}x'
          f'{args.image_size[1]}; backbone forward+backward (bb f+b) at '
          f'{"x".join(map(str, args.backbone_input))}; CPU threads: '
          f'{torch.get_num_threads()}')
    print(header)
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
