"""Launch settings for single-process, torchrun and slurm runs, on CUDA or
on the CPU."""
import os

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')


def _replace_sync_bn(node) -> int:
    """Turn SyncBN norm configs into BN in place; returns how many."""
    count = 0
    if isinstance(node, (dict, ConfigDict)):
        if node.get('type') in SYNC_BN_TYPES:
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_sync_bn(value)
    return count


def prepare_launch(cfg: Config, launcher: str) -> None:
    """Adapt ``cfg`` to the launcher and the available devices.

    Distributed runs without CUDA use the gloo backend, wrap the model in
    DDP without device ids, and replace SyncBN (CUDA-only) by per-process BN.
    The process group is created here for torchrun on the CPU, where
    mmengine would try to select a CUDA device.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    env_cfg.setdefault('dist_cfg', ConfigDict())['backend'] = 'gloo'
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel',
        device_ids=None,
        broadcast_buffers=False)
    replaced = _replace_sync_bn(cfg.model)
    if replaced:
        print_log(
            f'No CUDA device: {replaced} SyncBN layer configs use BN '
            'in each process instead',
            logger='current')
    if launcher == 'pytorch' and not dist.is_initialized():
        dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
