"""Train a detector or segmentor from an mmdet / mmseg config.

The config's ``default_scope`` decides the task. Examples:

    python tools/train.py configs/toy/acmix-r26-mini_upernet_toy-ade20k.py
    python tools/train.py CONFIG --resume                 # latest checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/iter_400.pth
    python tools/train.py CONFIG --auto-scale-lr  # lr x batch / base batch
    bash tools/dist_train.sh CONFIG 8                    # torchrun, 8 GPUs
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from acmix_mm.utils import (check_data_roots, check_feature_channels,
                            prepare_launch, trust_local_checkpoints)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--work-dir',
        help='where logs and checkpoints go (default: '
        'work_dirs/<config name>)')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        metavar='CHECKPOINT',
        help='resume from CHECKPOINT, or without a value from the latest '
        'checkpoint in the work dir (iteration, optimizer, schedulers)')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision (CUDA)')
    parser.add_argument(
        '--compile',
        action='store_true',
        help="torch.compile the model's train_step "
        "(mmengine's compile=True)")
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help="scale the learning rate by the total batch size over the "
        "config's auto_scale_lr.base_batch_size")
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. '
        'train_cfg.max_iters=100')
    parser.add_argument(
        '--launcher',
        default='none',
        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


class PlainParamGroupsHook(Hook):
    """Turns the optimizers' parameter groups into plain dicts before
    training. mmengine builds them as ``ConfigDict``; torch.compile of the
    train step (``compile=True``) fails in the optimizer step on those
    (Dynamo of torch 2.13: 'UserDefinedDictVariable' object has no attribute
    'items')."""

    def before_train(self, runner) -> None:
        wrappers = getattr(runner.optim_wrapper, '_optim_wrappers', None) \
            or {'': runner.optim_wrapper}
        for wrapper in wrappers.values():
            groups = wrapper.optimizer.param_groups
            groups[:] = [dict(group) for group in groups]


def enable_auto_scale_lr(cfg: Config, config_path: str) -> None:
    """Turn on mmengine's learning-rate scaling (as mmdet's --auto-scale-lr):
    the runner multiplies the learning rate by (processes x
    train_dataloader.batch_size) / auto_scale_lr.base_batch_size."""
    auto_scale_lr = cfg.get('auto_scale_lr')
    if auto_scale_lr is None:
        problem = 'no auto_scale_lr'
    elif not isinstance(auto_scale_lr, dict) or \
            not auto_scale_lr.get('base_batch_size'):
        problem = f'auto_scale_lr = {auto_scale_lr!r} without base_batch_size'
    else:
        auto_scale_lr.enable = True
        return
    raise SystemExit(
        f'error: --auto-scale-lr needs auto_scale_lr = '
        f'dict(base_batch_size=N) in the config, N being the total batch size '
        f'its learning rate was set for; {config_path} has {problem} (add '
        f'it, or pass --cfg-options auto_scale_lr.base_batch_size=N)')


def main() -> None:
    args = parse_args()
    trust_local_checkpoints()
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs',
        osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('error: --amp needs a CUDA device')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.compile:
        # Static shapes unless the config's compile dict says otherwise:
        # mmseg's decode and auxiliary heads share their loss code at two
        # map sizes, and the recompile with symbolic sizes fails in Inductor.
        cfg.compile = cfg.get('compile') or {}
        if isinstance(cfg.compile, dict):
            cfg.compile.setdefault('dynamic', False)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg, args.config)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        if not osp.isfile(args.resume):
            raise SystemExit(f'error: checkpoint to resume from not found: '
                             f'{args.resume}')
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('load_from') and not cfg.get('resume') and \
            '://' not in cfg.load_from and not osp.isfile(cfg.load_from):
        raise SystemExit(f'error: load_from checkpoint not found: '
                         f'{cfg.load_from}')

    check_data_roots(cfg, ['train_dataloader', 'val_dataloader'])
    prepare_launch(cfg, args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else \
        RUNNERS.build(cfg)
    check_feature_channels(runner.model)
    if cfg.get('compile'):
        runner.register_hook(PlainParamGroupsHook(), priority='VERY_HIGH')
    runner.train()


if __name__ == '__main__':
    main()
