"""Synthetic batches and single train/predict steps for smoke-testing configs.

Used by ``tools/analysis_tools/check_configs.py`` and the test-suite to run a
full detector or segmentor built from a config without any data set.
"""
import time
from typing import Dict, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, DefaultScope
from mmengine.structures import InstanceData, PixelData
from torch import nn


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in the config's default scope (mmdet or mmseg),
    which stays the current scope for running it."""
    scope = cfg.get('default_scope', 'mmdet')
    current = DefaultScope.get_current_instance()
    if current is None or current.scope_name != scope:
        DefaultScope.get_instance(
            f'{scope}-{time.time_ns()}', scope_name=scope)
    return MODELS.build(cfg.model)


def _shape_masks(rng: np.random.RandomState, height: int, width: int,
                 count: int) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` random ellipses: (count, H, W) uint8 masks and their boxes."""
    ys, xs = np.mgrid[:height, :width]
    masks = np.zeros((count, height, width), dtype=np.uint8)
    for i in range(count):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25,
                                                               0.75) * width
        ry, rx = rng.uniform(0.1, 0.25) * height, rng.uniform(0.1,
                                                              0.25) * width
        masks[i] = ((ys - cy) / ry)**2 + ((xs - cx) / rx)**2 <= 1
    boxes = np.array([[
        xs[m > 0].min(), ys[m > 0].min(), xs[m > 0].max() + 1,
        ys[m > 0].max() + 1
    ] for m in masks],
                     dtype=np.float32)
    return masks, boxes


def synthetic_batch(task: str,
                    num_images: int = 2,
                    image_size: Tuple[int, int] = (64, 96),
                    num_classes: int = 80,
                    seed: int = 0) -> Dict:
    """A dataloader-style batch of random images with random annotations.

    Args:
        task: 'mmdet' (boxes, instance masks) or 'mmseg' (semantic labels).
        num_images: batch size.
        image_size: (H, W) of every image.
        num_classes: labels are drawn from ``range(num_classes)``.
        seed: random seed.

    Returns:
        dict: ``inputs`` (list of (3, H, W) uint8 tensors) and
        ``data_samples`` (``DetDataSample`` or ``SegDataSample`` list).
    """
    rng = np.random.RandomState(seed)
    height, width = image_size
    meta = dict(
        img_shape=image_size,
        ori_shape=image_size,
        scale_factor=(1., 1.),
        flip=False,
        flip_direction=None)
    inputs, samples = [], []
    for index in range(num_images):
        inputs.append(
            torch.from_numpy(
                rng.randint(0, 256, (3, height, width), dtype=np.uint8)))
        if task == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            count = rng.randint(1, 4)
            masks, boxes = _shape_masks(rng, height, width, count)
            sample = DetDataSample(metainfo=dict(meta, img_id=index))
            sample.gt_instances = InstanceData(
                bboxes=torch.from_numpy(boxes),
                labels=torch.from_numpy(rng.randint(0, num_classes, count)),
                masks=BitmapMasks(masks, height, width))
        elif task == 'mmseg':
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            labels = rng.randint(0, num_classes, (1, height, width))
            sample.gt_sem_seg = PixelData(data=torch.from_numpy(labels))
        else:
            raise ValueError(f"task must be 'mmdet' or 'mmseg', got {task!r}")
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def num_classes_of(cfg: Config) -> int:
    """Number of classes the config's heads predict."""
    model = cfg.model
    if 'decode_head' in model:
        return model.decode_head.num_classes
    return model.roi_head.bbox_head.num_classes


def train_and_predict(model: nn.Module, cfg: Config, batch: Dict) -> Dict:
    """One optimiser step with the config's ``optim_wrapper``, then predict.

    Returns:
        dict: ``losses`` (float per loss term), ``predictions`` (data
        samples), ``train_seconds`` and ``predict_seconds``.
    """
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    start = time.perf_counter()
    log_vars = model.train_step(batch, optim_wrapper)
    train_seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        predictions = model.test_step(batch)
    predict_seconds = time.perf_counter() - start
    return dict(
        losses={
            k: torch.as_tensor(v).item()
            for k, v in log_vars.items()
        },
        predictions=predictions,
        train_seconds=train_seconds,
        predict_seconds=predict_seconds)
