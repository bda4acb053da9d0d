"""Write pictures of a model's predictions as PNG files.

Detection configs get boxes, labels and instance masks; segmentation configs
get the predicted label map as a colour overlay.

Usage:
    python tools/visualize_predictions.py CONFIG CHECKPOINT IMAGES... \\
        --out-dir pictures [--score-thr 0.3] [--limit 8]

IMAGES are image files or folders (their .jpg/.jpeg/.png files, sorted).
"""
import argparse
import math
import os
import os.path as osp
from typing import List

import mmcv
import numpy as np
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import VISUALIZERS
from mmengine.structures import PixelData

from acmix_mm.utils import trust_local_checkpoints

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('images', nargs='+', help='image files or folders')
    parser.add_argument(
        '--out-dir', required=True, help='folder for the PNG pictures')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection: hide boxes scoring lower')
    parser.add_argument('--limit', type=int, help='at most this many images')
    parser.add_argument(
        '--min-size',
        type=int,
        default=384,
        help='enlarge smaller images (with their '
        'predictions) to this shorter side for drawing')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args()


def list_images(sources: List[str]) -> List[str]:
    images = []
    for source in sources:
        if osp.isdir(source):
            images += sorted(
                osp.join(source, name) for name in os.listdir(source)
                if name.lower().endswith(IMAGE_SUFFIXES))
        elif osp.isfile(source):
            images.append(source)
        else:
            raise SystemExit(f'error: no such image or folder: {source}')
    if not images:
        raise SystemExit(f'error: no images found in {sources}')
    return images


def enlarge(image: np.ndarray, result, min_size: int):
    """Scale a small image and its prediction up by an integer factor so
    that boxes, masks and labels are drawn legibly."""
    factor = math.ceil(min_size / min(image.shape[:2]))
    if factor <= 1:
        return image, result
    image = mmcv.imrescale(image, float(factor), interpolation='nearest')
    result = result.clone()
    if 'pred_instances' in result:
        instances = result.pred_instances
        instances.bboxes = instances.bboxes * factor
        if 'masks' in instances:
            masks = instances.masks[:, None].float()
            instances.masks = F.interpolate(
                masks, scale_factor=factor, mode='nearest')[:, 0].bool()
    else:
        labels = result.pred_sem_seg.data[None].float()
        result.pred_sem_seg = PixelData(
            data=F.interpolate(labels, scale_factor=factor, mode='nearest')
            [0].long())
    result.set_metainfo(
        dict(img_shape=image.shape[:2], ori_shape=image.shape[:2]))
    return image, result


def main() -> None:
    args = parse_args()
    trust_local_checkpoints()
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            raise SystemExit(f'error: file not found: {path}')
    images = list_images(args.images)[:args.limit]
    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmdet':
        from mmdet.apis import inference_detector as inference
        from mmdet.apis import init_detector as init_model
        draw_args = dict(pred_score_thr=args.score_thr)
    else:
        from mmseg.apis import inference_model as inference
        from mmseg.apis import init_model
        draw_args = dict(with_labels=False)
    model = init_model(cfg, args.checkpoint, device=args.device)
    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name='visualize_predictions', vis_backends=None))
    visualizer.dataset_meta = model.dataset_meta

    os.makedirs(args.out_dir, exist_ok=True)
    for path in images:
        image, result = enlarge(
            mmcv.imread(path, channel_order='rgb'), inference(model, path),
            args.min_size)
        out_file = osp.join(args.out_dir,
                            osp.splitext(osp.basename(path))[0] + '.png')
        visualizer.add_datasample(
            osp.basename(path),
            image,
            data_sample=result,
            draw_gt=False,
            show=False,
            out_file=out_file,
            **draw_args)
    print(f'wrote {len(images)} pictures to {args.out_dir}')


if __name__ == '__main__':
    main()
