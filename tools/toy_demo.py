"""Train and evaluate Mask R-CNN, UperNet and a Hamburger head with ACmix
backbones on the toy data, then print the metrics and where the curves,
pictures and checkpoints are.

Runs the same commands a user would: for each toy config
``tools/test.py --untrained`` (the baseline), ``tools/train.py``,
``tools/analysis_tools/plot_curves.py`` (loss and validation curves),
``tools/test.py`` on the last checkpoint and
``tools/visualize_predictions.py``. Logs go to ``<work dir>/*.log``.

Usage (after ``python tools/make_toy_data.py``):
    python tools/toy_demo.py [--work-dir work_dirs/toy_demo]
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools')
DEMOS = [
    dict(
        name='mask-rcnn',
        config='configs/toy/mask-rcnn_acmix-swin-mini_fpn_toy-coco.py',
        images='data/toy_coco/val2017',
        metrics=[
            'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP',
            'coco/segm_mAP_50'
        ]),
    dict(
        name='upernet',
        config='configs/toy/acmix-r26-mini_upernet_toy-ade20k.py',
        images='data/toy_ade20k/images/validation',
        metrics=['mIoU', 'aAcc']),
    dict(
        name='ham',
        config='configs/toy/acmix-r26-mini_light-ham_toy-ade20k.py',
        images='data/toy_ade20k/images/validation',
        metrics=['mIoU', 'aAcc']),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/toy_demo')
    parser.add_argument(
        '--pictures', type=int, default=8, help='validation images to draw')
    return parser.parse_args()


def run(step: str, command: List[str], log: str) -> None:
    """Run a tool, its output going to ``log``; stop with its tail on
    failure."""
    start = time.perf_counter()
    print(f'  {step:<10} ... ', end='', flush=True)
    with open(log, 'w') as file:
        result = subprocess.run(
            command, cwd=REPO, stdout=file, stderr=subprocess.STDOUT)
    print(f'{time.perf_counter() - start:6.1f}s  (log: {osp.relpath(log)})')
    if result.returncode != 0:
        with open(log) as file:
            tail = file.readlines()[-30:]
        sys.exit(f'{" ".join(command)} failed:\n{"".join(tail)}')


def read_metrics(work_dir: str) -> Dict[str, float]:
    files = sorted(glob.glob(osp.join(work_dir, '*', 'metrics.json')))
    with open(files[-1]) as file:
        return json.load(file)


def last_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as file:
        return file.read().strip()


def demo(spec: dict, root: str, pictures: int) -> dict:
    work_dir = osp.join(root, spec['name'])
    os.makedirs(work_dir, exist_ok=True)
    python, config = sys.executable, spec['config']
    print(f'{spec["name"]}: {config}')
    untrained_dir = osp.join(work_dir, 'untrained')
    run('untrained', [
        python, f'{TOOLS}/test.py', config, '--untrained', '--work-dir',
        untrained_dir
    ], osp.join(work_dir, 'untrained.log'))
    run('train', [python, f'{TOOLS}/train.py', config, '--work-dir', work_dir],
        osp.join(work_dir, 'train.log'))
    curves = osp.join(work_dir, 'curves.png')
    run('curves', [
        python, f'{TOOLS}/analysis_tools/plot_curves.py', work_dir, '--out',
        curves, '--title', f'{spec["name"]}: {osp.basename(config)}'
    ], osp.join(work_dir, 'curves.log'))
    checkpoint = last_checkpoint(work_dir)
    test_dir = osp.join(work_dir, 'test')
    run('test', [
        python, f'{TOOLS}/test.py', config, checkpoint, '--work-dir', test_dir
    ], osp.join(work_dir, 'test.log'))
    picture_dir = osp.join(work_dir, 'pictures')
    run('pictures', [
        python, f'{TOOLS}/visualize_predictions.py', config, checkpoint,
        spec['images'], '--out-dir', picture_dir, '--limit',
        str(pictures)
    ], osp.join(work_dir, 'pictures.log'))
    return dict(
        untrained=read_metrics(untrained_dir),
        trained=read_metrics(test_dir),
        checkpoint=checkpoint,
        curves=curves,
        pictures=picture_dir)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    work_dir = osp.abspath(args.work_dir)
    results = {
        spec['name']: demo(spec, work_dir, args.pictures)
        for spec in DEMOS
    }
    print(f'\nToy results (validation set), {time.perf_counter() - start:.0f}'
          f's in total:')
    print(f'  {"model":<10} {"metric":<18} {"untrained":>9} {"trained":>9}')
    for spec in DEMOS:
        result = results[spec['name']]
        for metric in spec['metrics']:
            print(f'  {spec["name"]:<10} {metric:<18} '
                  f'{result["untrained"][metric]:>9.3f} '
                  f'{result["trained"][metric]:>9.3f}')
    print()
    for spec in DEMOS:
        result = results[spec['name']]
        indent = ' ' * len(spec['name'])
        print(f'{spec["name"]}: checkpoint {osp.relpath(result["checkpoint"])}'
              f'\n{indent}  curves     {osp.relpath(result["curves"])}'
              f'\n{indent}  pictures   {osp.relpath(result["pictures"])}/')


if __name__ == '__main__':
    main()
