"""tools/analysis_tools/plot_curves.py on mmengine scalar logs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools/analysis_tools/plot_curves.py'


def write_run(work_dir: Path, timestamp: str, lines: list) -> None:
    """A run's vis_data/scalars.json as mmengine 0.10 writes it."""
    folder = work_dir / timestamp / 'vis_data'
    folder.mkdir(parents=True)
    with open(folder / 'scalars.json', 'w') as file:
        for line in lines:
            file.write(json.dumps(line) + '\n')


def train_line(step: int, loss: float) -> dict:
    return dict(
        base_lr=1e-3,
        lr=1e-3,
        data_time=0.01,
        loss=loss,
        **{'decode.loss_ce': loss},
        time=0.5,
        iter=step,
        step=step)


def val_line(step: int, miou: float) -> dict:
    return dict(aAcc=90.0, mIoU=miou, mAcc=60.0, data_time=0.0, step=step)


@pytest.fixture
def resumed_work_dir(tmp_path) -> Path:
    """A run killed after step 20, resumed from its step-10 checkpoint."""
    write_run(tmp_path, '20240101_000000', [
        train_line(10, 2.0),
        val_line(10, 10.0),
        train_line(20, 1.5),
    ])
    write_run(tmp_path, '20240101_010000', [
        train_line(20, 1.2),
        val_line(20, 30.0),
        train_line(30, 0.8),
        val_line(30, 40.0),
    ])
    return tmp_path


def load_tool():
    sys.path.insert(0, str(TOOL.parent))
    try:
        import plot_curves
    finally:
        sys.path.pop(0)
    return plot_curves


def test_resumed_runs_are_joined_and_split_into_train_and_val(
        resumed_work_dir):
    tool = load_tool()
    train, val = tool.read_curves(tool.scalar_files(str(resumed_work_dir)))
    assert train['loss'] == {10: 2.0, 20: 1.2, 30: 0.8}
    assert train['decode.loss_ce'] == train['loss']
    assert val['mIoU'] == {10: 10.0, 20: 30.0, 30: 40.0}
    assert 'mIoU' not in train and 'loss' not in val
    assert not {'time', 'data_time', 'step', 'iter'} & (set(train) | set(val))


def test_writes_png_with_both_panels(resumed_work_dir):
    result = subprocess.run(
        [sys.executable, str(TOOL),
         str(resumed_work_dir)],
        capture_output=True,
        text=True)
    assert result.returncode == 0, result.stderr
    png = resumed_work_dir / 'curves.png'
    assert result.stdout.strip() == f'curves: {png}'
    import cv2
    image = cv2.imread(str(png))
    assert image.shape[:2] == (288, 800)  # 10 x 3.6 inches at 80 dpi
    # Two panels with lines in them: not a blank figure.
    assert (image < 200).any(axis=2).mean() > 0.02


def test_unknown_key_and_missing_logs_are_named(resumed_work_dir, tmp_path):
    result = subprocess.run([
        sys.executable,
        str(TOOL),
        str(resumed_work_dir), '--metrics', 'coco/bbox_mAP'
    ],
                            capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert ('metrics coco/bbox_mAP not in the log; it has aAcc, mAcc, mIoU'
            in result.stderr)
    empty = tmp_path / 'empty'
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(TOOL), str(empty)],
        capture_output=True,
        text=True)
    assert result.returncode != 0
    assert f'{empty} holds no <timestamp>/vis_data/scalars.json' in \
        result.stderr
