"""Evaluate a detector or segmentor checkpoint with its config's metrics.

The config's ``default_scope`` decides the task (COCO bbox/segm mAP for
mmdet configs, mIoU for mmseg configs). Examples:

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir pictures
    python tools/test.py CONFIG CHECKPOINT --out results.pkl   # mmdet
    python tools/test.py CONFIG CHECKPOINT --out pred_dir      # mmseg
    python tools/test.py CONFIG --untrained    # freshly initialised model
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

The metrics are printed and written to ``<work dir>/<timestamp>/metrics.json``.
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.dist import is_main_process
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from acmix_mm.utils import (check_data_roots, check_feature_channels,
                            prepare_launch, trust_local_checkpoints)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file')
    parser.add_argument(
        '--untrained',
        action='store_true',
        help='evaluate the freshly initialised model instead '
        'of a checkpoint (a baseline for training)')
    parser.add_argument('--work-dir', help='where logs and metrics go')
    parser.add_argument(
        '--out',
        help='mmdet: .pkl file for the raw predictions; mmseg: folder for '
        'the predicted label maps (formatted for offline evaluation)')
    parser.add_argument(
        '--show-dir', help='folder for pictures of the predictions')
    parser.add_argument(
        '--tta',
        action='store_true',
        help="test-time augmentation (the config's "
        'tta_model and tta_pipeline)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries')
    parser.add_argument(
        '--launcher',
        default='none',
        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if bool(args.checkpoint) == args.untrained:
        parser.error('give a CHECKPOINT or --untrained (not both)')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_pictures(cfg: Config, show_dir: str) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('error: --show-dir needs a visualization hook in '
                         'default_hooks')
    hook.draw = True
    if cfg.default_scope == 'mmdet':
        hook.test_out_dir = osp.abspath(show_dir)
    else:
        cfg.visualizer.save_dir = osp.abspath(show_dir)
        hook.interval = 1


def enable_tta(cfg: Config) -> None:
    mask_head = cfg.model.get('roi_head', {}).get('mask_head')
    if cfg.default_scope == 'mmdet' and mask_head is not None:
        raise SystemExit('error: mmdet has no test-time augmentation for '
                         'instance segmentation (mask) models')
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise SystemExit(f'error: --tta needs {" and ".join(missing)} in '
                         f'the config')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def enable_output(cfg: Config, out: str) -> None:
    if cfg.default_scope == 'mmdet':
        if not out.endswith(('.pkl', '.pickle')):
            raise SystemExit('error: --out must be a .pkl or .pickle file')
        return
    cfg.test_evaluator['output_dir'] = out
    cfg.test_evaluator['keep_results'] = True


def main() -> None:
    args = parse_args()
    trust_local_checkpoints()
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs',
        osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_pictures(cfg, args.show_dir)
    if args.tta:
        enable_tta(cfg)
    if args.out:
        enable_output(cfg, args.out)

    check_data_roots(cfg, ['test_dataloader'])
    prepare_launch(cfg, args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else \
        RUNNERS.build(cfg)
    check_feature_channels(runner.model)
    if args.out and cfg.default_scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    if args.untrained:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        model.init_weights()
    metrics = runner.test()
    if is_main_process():
        path = osp.join(runner.log_dir, 'metrics.json')
        with open(path, 'w') as file:
            json.dump(metrics, file, indent=2, default=float)
        print(f'metrics: {json.dumps(metrics, default=float)}\n'
              f'written to {path}')


if __name__ == '__main__':
    main()
