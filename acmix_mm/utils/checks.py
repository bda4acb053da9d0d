"""Checks that turn common config mistakes into clear errors."""
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.fileio.backends import LocalBackend, backends, prefix_to_backends
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

DATA_HELP = ('see "Data" in README.md for how to prepare it, or pass '
             '--cfg-options to point the config at your copy')


def _datasets(cfg: Config,
              loaders: Sequence[str]) -> Iterator[Tuple[str, dict]]:
    """(loader name, dataset config) pairs, unwrapping dataset wrappers."""
    for loader in loaders:
        if cfg.get(loader) is None:
            continue
        stack = [cfg[loader].dataset]
        while stack:
            dataset = stack.pop()
            if 'dataset' in dataset:
                stack.append(dataset.dataset)
            elif 'datasets' in dataset:
                stack.extend(dataset.datasets)
            else:
                yield loader, dataset


def storage_backend(path: str, backend_args: Optional[dict]) -> str:
    """Name of the mmengine file backend that reads ``path`` with these
    ``backend_args``: ``'local'`` or e.g. ``'petrel'``, ``'http'``.

    As mmengine's fileio decides: ``backend_args['backend']`` if given,
    else the path's prefix (``s3://``, ``http://``, ...).
    """
    name = (backend_args or {}).get('backend')
    if name is None:
        prefix = str(path).split('://')[0] if '://' in str(path) else ''
        # 'cluster:s3://bucket' names a petrel cluster before the prefix.
        prefix = prefix.split(':')[-1]
        backend = prefix_to_backends.get(prefix)
        name = prefix or 'local'
    else:
        backend = backends.get(name)
    if backend is not None and issubclass(backend, LocalBackend):
        return 'local'
    return name


def check_data_roots(cfg: Config, loaders: Sequence[str]) -> None:
    """Raise FileNotFoundError naming the first missing data root, annotation
    file or image folder of the datasets the given dataloaders read.

    Only local files are checked: a dataset read through another storage
    backend (its ``backend_args``, or an ``s3://``, ``http://``... root) is
    left to the dataset, which reports what it cannot read.
    """
    for loader, dataset in _datasets(cfg, loaders):
        root = dataset.get('data_root') or ''
        backend = storage_backend(root, dataset.get('backend_args'))
        if backend != 'local':
            print_log(
                f'{loader}: data_root {root} is read through the {backend} '
                'backend; not checked here',
                logger='current')
            continue
        if root and not osp.isdir(root):
            raise FileNotFoundError(
                f'{loader}: data_root {osp.abspath(root)} does not exist; '
                f'{DATA_HELP}')
        paths = []
        if dataset.get('ann_file'):
            paths.append(('ann_file', dataset.ann_file))
        prefix = dataset.get('data_prefix') or {}
        paths.extend((f'data_prefix.{key}', value)
                     for key, value in prefix.items() if value)
        for name, path in paths:
            full = osp.join(root, path)
            if not osp.exists(full):
                raise FileNotFoundError(
                    f'{loader}: {name} {osp.abspath(full)} does not exist; '
                    f'{DATA_HELP}')


def _expected_inputs(
        model: nn.Module) -> List[Tuple[str, List[int], List[int]]]:
    """(consumer, backbone output indices, channels) the heads expect."""
    expected = []
    neck = getattr(model, 'neck', None)
    if neck is not None and hasattr(neck, 'in_channels'):
        channels = neck.in_channels
        channels = list(channels) if isinstance(channels,
                                                (list, tuple)) else [channels]
        expected.append((f'neck {type(neck).__name__}',
                         list(range(len(channels))), channels))
        return expected
    heads = [getattr(model, 'decode_head', None)]
    auxiliary = getattr(model, 'auxiliary_head', None)
    heads += list(auxiliary) if isinstance(auxiliary,
                                           nn.ModuleList) else [auxiliary]
    for head in heads:
        if head is None or not hasattr(head, 'in_index'):
            continue
        index, channels = head.in_index, head.in_channels
        if isinstance(index, int):
            index, channels = [index], [channels]
        expected.append(
            (f'head {type(head).__name__}', list(index), list(channels)))
    return expected


@torch.no_grad()
def check_feature_channels(model: nn.Module, image_size: int = 64) -> None:
    """Run the backbone once on a dummy image and raise ValueError if the
    neck or heads expect other channel counts than it produces."""
    if is_model_wrapper(model):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    expected = _expected_inputs(model)
    if backbone is None or not expected:
        return
    in_channels = getattr(backbone, 'in_channels', 3)
    parameter = next(backbone.parameters())
    dummy = torch.zeros(
        1,
        in_channels,
        image_size,
        image_size,
        dtype=parameter.dtype,
        device=parameter.device)
    was_training = backbone.training
    backbone.eval()
    features = backbone(dummy)
    backbone.train(was_training)
    produced = [feature.shape[1] for feature in features]
    for consumer, indices, channels in expected:
        if max(indices) >= len(produced) or [produced[i] for i in indices
                                             ] != list(channels):
            raise ValueError(
                f'{type(backbone).__name__} outputs {len(produced)} feature '
                f'maps with channels {produced}, but {consumer} expects '
                f'channels {list(channels)} at indices {indices}; set its '
                f'in_channels (and the backbone out_indices) to agree')
