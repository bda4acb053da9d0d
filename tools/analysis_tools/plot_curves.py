"""Training loss and validation metric curves of a work dir, as a PNG.

Reads the scalars mmengine (0.10) writes during training,
``WORK_DIR/<timestamp>/vis_data/scalars.json``; the runs of a resumed
training (several timestamps) are joined, a later run replacing the steps it
repeats. The left panel shows the losses over the iterations, the right one
the validation metrics at the iterations where validation ran.

Usage:
    python tools/analysis_tools/plot_curves.py WORK_DIR [--out curves.png]
        [--losses loss decode.loss_ce] [--metrics mIoU aAcc]
"""
import argparse
import glob
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

# Series name -> {step: value}.
Curves = Dict[str, Dict[int, float]]
# Keys of a log line that are not curves.
BOOKKEEPING = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory'}
# Validation metrics drawn by default (by the end of their name).
DEFAULT_METRICS = ('mIoU', 'mAcc', 'aAcc', 'mAP', 'mAP_50', 'mAP_75')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'work_dir',
        help='a training work dir, or one scalars.json of mmengine')
    parser.add_argument(
        '--out', help='PNG to write (default: WORK_DIR/curves.png)')
    parser.add_argument(
        '--losses',
        nargs='+',
        help='loss keys to draw (default: every key with "loss" in it)')
    parser.add_argument(
        '--metrics',
        nargs='+',
        help='validation keys to draw (default: those ending in '
        f'{", ".join(DEFAULT_METRICS)})')
    parser.add_argument('--title', help='figure title (default: WORK_DIR)')
    return parser.parse_args()


def scalar_files(work_dir: str) -> List[str]:
    """The scalars.json files of a work dir's runs, oldest first."""
    if osp.isfile(work_dir):
        return [work_dir]
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'work dir {work_dir} does not exist')
    files = sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(
            f'{work_dir} holds no <timestamp>/vis_data/scalars.json; is it '
            'the work dir of a training run (tools/train.py --work-dir)?')
    return files


def read_curves(files: Sequence[str]) -> Tuple[Curves, Curves]:
    """(training scalars, validation scalars) of mmengine scalar files.

    Training lines carry a learning rate; the others are validation
    results.
    """
    train: Curves = {}
    val: Curves = {}
    for path in files:
        with open(path) as file:
            lines = [json.loads(line) for line in file if line.strip()]
        for line in lines:
            step = int(line['step'])
            is_train = any(key.endswith('lr') for key in line)
            target = train if is_train else val
            for key, value in line.items():
                if key not in BOOKKEEPING and isinstance(value, (int, float)):
                    target.setdefault(key, {})[step] = float(value)
    return train, val


def choose(available: Curves, wanted: Optional[Sequence[str]],
           default: List[str], kind: str) -> List[str]:
    """The keys to draw; a requested key that was not logged is an error."""
    if wanted is None:
        return default
    missing = [key for key in wanted if key not in available]
    if missing:
        raise KeyError(f'{kind} {", ".join(missing)} not in the log; it has '
                       f'{", ".join(sorted(available)) or "none"}')
    return list(wanted)


def plot_curves(work_dir: str,
                out: Optional[str] = None,
                losses: Optional[Sequence[str]] = None,
                metrics: Optional[Sequence[str]] = None,
                title: Optional[str] = None) -> str:
    """Write the loss and metric curves of ``work_dir`` to a PNG; returns
    its path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train, val = read_curves(scalar_files(work_dir))
    loss_keys = choose(train, losses, [key for key in train if 'loss' in key],
                       'losses')
    metric_keys = choose(
        val, metrics,
        [key for key in val if key.split('/')[-1].endswith(DEFAULT_METRICS)],
        'metrics')
    if not loss_keys:
        raise KeyError(f'no loss was logged in {work_dir}')
    out = out or osp.join(
        work_dir if osp.isdir(work_dir) else osp.dirname(work_dir),
        'curves.png')

    figure, (loss_axes, metric_axes) = plt.subplots(
        1, 2, figsize=(10, 3.6), dpi=80)
    for key in loss_keys:
        steps = sorted(train[key])
        loss_axes.plot(
            steps, [train[key][s] for s in steps], label=key, linewidth=1)
    loss_axes.set(xlabel='iteration', ylabel='loss', title='training loss')
    loss_axes.legend(fontsize='small')
    for key in metric_keys:
        steps = sorted(val[key])
        metric_axes.plot(
            steps, [val[key][s] for s in steps], label=key, marker='o')
    metric_axes.set(xlabel='iteration', title='validation')
    if metric_keys:
        metric_axes.legend(fontsize='small')
    else:
        metric_axes.text(
            0.5,
            0.5,
            'no validation logged',
            ha='center',
            transform=metric_axes.transAxes)
    for axes in (loss_axes, metric_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title or osp.basename(osp.normpath(work_dir)))
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out


def main() -> None:
    args = parse_args()
    try:
        out = plot_curves(args.work_dir, args.out, args.losses, args.metrics,
                          args.title)
    except (FileNotFoundError, KeyError) as error:
        raise SystemExit(f'error: {error.args[0]}')
    print(f'curves: {out}')


if __name__ == '__main__':
    main()
