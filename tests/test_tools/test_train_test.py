"""The training workflow as a user runs it: tools/train.py, tools/test.py,
torchrun launchers, resuming, and the errors for common mistakes, on a tiny
copy of the toy data."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from acmix_mm.testing import build_model
from acmix_mm.utils import check_feature_channels, trust_local_checkpoints

REPO = Path(__file__).resolve().parents[2]
DET = str(REPO / 'configs/toy/mask-rcnn_acmix-swin-mini_fpn_toy-coco.py')
SEG = str(REPO / 'configs/toy/acmix-r26-mini_upernet_toy-ade20k.py')
SHORT = [
    '--cfg-options', 'train_cfg.max_iters=4', 'train_cfg.val_interval=4',
    'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'
]


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
    """A folder with data/toy_coco and data/toy_ade20k (8 train, 4 val)."""
    root = tmp_path_factory.mktemp('workspace')
    subprocess.run([
        sys.executable,
        str(REPO / 'tools/make_toy_data.py'), '--out-dir',
        str(root / 'data'), '--num-train', '8', '--num-val', '4',
        '--image-size', '64'
    ],
                   check=True,
                   capture_output=True)
    return root


def tool(workspace: Path,
         *args: str,
         check: bool = True,
         timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a tools/ script (or launcher) from the workspace folder."""
    script = str(REPO / 'tools' / args[0])
    command = (['bash', script] if script.endswith('.sh') else
               [sys.executable, script]) + list(args[1:])
    env = dict(os.environ, PORT=str(29500 + os.getpid() % 1000))
    result = subprocess.run(
        command,
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + \
            result.stderr[-3000:]
    return result


def metrics_of(result: subprocess.CompletedProcess) -> dict:
    line = next(line for line in result.stdout.splitlines()
                if line.startswith('metrics: '))
    return json.loads(line[len('metrics: '):])


@pytest.fixture(scope='module')
def trained_detector(workspace) -> Path:
    tool(workspace, 'train.py', DET, '--work-dir', 'work_dirs/det', *SHORT)
    return workspace / 'work_dirs/det/iter_4.pth'


@pytest.fixture(scope='module')
def trained_segmentor(workspace) -> Path:
    tool(workspace, 'train.py', SEG, '--work-dir', 'work_dirs/seg', *SHORT)
    return workspace / 'work_dirs/seg/iter_4.pth'


@pytest.mark.slow
def test_detection_train_then_test_with_outputs(workspace, trained_detector):
    assert (workspace / 'work_dirs/det/iter_2.pth').is_file()
    result = tool(workspace, 'test.py', DET, str(trained_detector), '--out',
                  'det.pkl', '--show-dir', 'det_pictures')
    metrics = metrics_of(result)
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'):
        assert 0 <= metrics[key] <= 1
    assert (workspace / 'det.pkl').stat().st_size > 0
    assert len(list((workspace / 'det_pictures').glob('*.jpg'))) == 4


@pytest.mark.slow
def test_segmentation_train_then_test_with_outputs(workspace,
                                                   trained_segmentor):
    result = tool(workspace, 'test.py', SEG, str(trained_segmentor), '--out',
                  'seg_out', '--show-dir', 'seg_pictures')
    metrics = metrics_of(result)
    assert 0 <= metrics['mIoU'] <= 100 and 0 < metrics['aAcc'] <= 100
    assert len(list((workspace / 'seg_out').glob('*.png'))) == 4
    assert len(list((workspace / 'seg_pictures').rglob('*.png'))) == 4


@pytest.mark.slow
def test_untrained_baseline_and_pictures(workspace, trained_segmentor):
    result = tool(workspace, 'test.py', SEG, '--untrained')
    assert 'mIoU' in metrics_of(result)
    tool(workspace, 'visualize_predictions.py', SEG, str(trained_segmentor),
         'data/toy_ade20k/images/validation', '--out-dir', 'pngs', '--limit',
         '2')
    pictures = sorted((workspace / 'pngs').glob('*.png'))
    assert [p.name for p in pictures] == ['000000.png', '000001.png']
    import cv2
    assert cv2.imread(str(pictures[0])).shape[:2] == (384, 384)


@pytest.mark.slow
def test_test_time_augmentation(workspace, trained_segmentor,
                                trained_detector):
    result = tool(workspace, 'test.py', SEG, str(trained_segmentor), '--tta')
    assert 'mIoU' in metrics_of(result)
    result = tool(
        workspace, 'test.py', DET, str(trained_detector), '--tta', check=False)
    assert result.returncode != 0
    assert 'no test-time augmentation for instance segmentation' in \
        result.stderr


@pytest.mark.slow
def test_two_process_distributed_training(workspace):
    result = tool(workspace, 'dist_train.sh', SEG, '2', '--work-dir',
                  'work_dirs/dist_seg', *SHORT)
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert (workspace / 'work_dirs/dist_seg/iter_4.pth').is_file()


@pytest.mark.parametrize('task', ['det', 'seg'])
@pytest.mark.slow
def test_distributed_evaluation_gathers_all_ranks(workspace, task, request):
    config = DET if task == 'det' else SEG
    fixture = 'trained_detector' if task == 'det' else 'trained_segmentor'
    checkpoint = str(request.getfixturevalue(fixture))
    single = metrics_of(tool(workspace, 'test.py', config, checkpoint))
    distributed = metrics_of(
        tool(workspace, 'dist_test.sh', config, checkpoint, '2'))
    assert distributed == single


@pytest.mark.slow
def test_resume_after_interrupted_run(workspace, monkeypatch):
    work_dir = workspace / 'work_dirs/resume'
    command = [
        sys.executable,
        str(REPO / 'tools/train.py'), SEG, '--work-dir',
        str(work_dir), '--cfg-options', 'train_cfg.max_iters=12',
        'train_cfg.val_interval=12', 'default_hooks.checkpoint.interval=3'
    ]
    process = subprocess.Popen(
        command,
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    last = work_dir / 'last_checkpoint'
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and \
            time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), 'no checkpoint was written before the kill'
    checkpoint = Path(last.read_text().strip())
    saved_iter = int(checkpoint.stem.split('_')[1])

    # The runner restores the iteration and the optimizer state exactly.
    monkeypatch.chdir(workspace)
    trust_local_checkpoints()
    cfg = Config.fromfile(SEG)
    cfg.work_dir = str(workspace / 'work_dirs/inspect')
    runner = Runner.from_cfg(cfg)
    runner.resume(str(checkpoint))
    assert runner.iter == saved_iter
    saved = torch.load(
        checkpoint, map_location='cpu',
        weights_only=False)['optimizer']['state']
    restored = runner.optim_wrapper.state_dict()['state']
    assert saved.keys() == restored.keys() and saved
    for key in saved:
        for name, value in saved[key].items():
            assert torch.equal(restored[key][name], value)

    result = tool(workspace, 'train.py', SEG, '--work-dir', str(work_dir),
                  '--resume', '--cfg-options', 'train_cfg.max_iters=12',
                  'train_cfg.val_interval=12',
                  'default_hooks.checkpoint.interval=3')
    log = result.stdout + result.stderr
    assert f'resumed epoch: 0, iter: {saved_iter}' in log
    assert (work_dir / 'iter_12.pth').is_file()


def test_missing_data_root_is_named(tmp_path):
    result = tool(tmp_path, 'train.py', SEG, check=False)
    assert result.returncode != 0
    assert 'data/toy_ade20k does not exist' in result.stderr
    assert 'README' in result.stderr


def test_missing_checkpoints_are_named(workspace):
    result = tool(workspace, 'test.py', SEG, 'nowhere/iter_9.pth', check=False)
    assert result.returncode != 0
    assert 'checkpoint not found: nowhere/iter_9.pth' in result.stderr
    result = tool(
        workspace, 'train.py', SEG, '--resume', 'gone.pth', check=False)
    assert result.returncode != 0 and 'gone.pth' in result.stderr
    (workspace / 'broken.pth').write_bytes(b'<html>404</html>' * 50)
    result = tool(workspace, 'test.py', SEG, 'broken.pth', check=False)
    assert result.returncode != 0
    assert 'broken.pth is not a valid checkpoint' in result.stderr


def test_channel_mismatch_is_named(workspace):
    result = tool(
        workspace,
        'train.py',
        DET,
        '--cfg-options',
        'model.neck.in_channels=[64,128,256,512]',
        check=False)
    assert result.returncode != 0
    assert ('outputs 4 feature maps with channels [32, 64, 128, 256], but '
            'neck FPN expects channels [64, 128, 256, 512]') in result.stderr


def test_channel_check_covers_segmentation_heads():
    cfg = Config.fromfile(SEG)
    cfg.model.auxiliary_head.in_channels = 128
    with pytest.raises(
            ValueError,
            match=r'head FCNHead expects channels '
            r'\[128\] at indices \[2\]'):
        check_feature_channels(build_model(cfg))
    cfg = Config.fromfile(SEG)
    check_feature_channels(build_model(cfg))
