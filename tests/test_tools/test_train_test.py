"""The training workflow as a user runs it: tools/train.py, tools/test.py,
torchrun launchers, resuming, and the errors for common mistakes, on a tiny
copy of the toy data."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from acmix_mm.testing import build_model
from acmix_mm.utils import (check_data_roots, check_feature_channels,
                            trust_local_checkpoints)

REPO = Path(__file__).resolve().parents[2]
DET = str(REPO / 'configs/toy/mask-rcnn_acmix-swin-mini_fpn_toy-coco.py')
SEG = str(REPO / 'configs/toy/acmix-r26-mini_upernet_toy-ade20k.py')
HAM = str(REPO / 'configs/toy/acmix-r26-mini_light-ham_toy-ade20k.py')
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


def scalars_of(work_dir: Path) -> list:
    """The lines of a training run's vis_data/scalars.json."""
    (path, ) = work_dir.glob('*/vis_data/scalars.json')
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ham_head_trains_evaluates_and_plots_curves(workspace):
    tool(workspace, 'train.py', HAM, '--work-dir', 'work_dirs/ham', *SHORT)
    work_dir = workspace / 'work_dirs/ham'
    logged = set().union(*scalars_of(work_dir))
    # The Hamburger head alone: no auxiliary head.
    assert 'decode.loss_ce' in logged and 'aux.loss_ce' not in logged
    assert 'mIoU' in logged  # validation ran during training
    result = tool(workspace, 'test.py', HAM, str(work_dir / 'iter_4.pth'))
    metrics = metrics_of(result)
    assert 0 <= metrics['mIoU'] <= 100 and 0 < metrics['aAcc'] <= 100
    result = tool(workspace, 'analysis_tools/plot_curves.py', 'work_dirs/ham')
    assert result.stdout.strip() == 'curves: work_dirs/ham/curves.png'
    assert (work_dir / 'curves.png').stat().st_size > 10000


def test_auto_scale_lr_needs_base_batch_size(tmp_path):
    result = tool(tmp_path, 'train.py', SEG, '--auto-scale-lr', check=False)
    assert result.returncode != 0
    assert ('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N)'
            in result.stderr)
    assert 'acmix-r26-mini_upernet_toy-ade20k.py has no auto_scale_lr' in \
        result.stderr
    result = tool(
        tmp_path,
        'train.py',
        DET,
        '--auto-scale-lr',
        '--cfg-options',
        'auto_scale_lr.base_batch_size=0',
        check=False)
    assert result.returncode != 0
    assert 'without base_batch_size' in result.stderr


@pytest.mark.slow
def test_auto_scale_lr_scales_by_the_total_batch_size(workspace):
    one_iteration = [
        'train_cfg.max_iters=1', 'train_cfg.val_begin=2',
        'default_hooks.logger.interval=1'
    ]
    # The toy detector trains with a batch of 4; stating that its lr is set
    # for 16 scales every parameter group's lr by 4 / 16.
    result = tool(workspace, 'train.py', DET, '--work-dir', 'work_dirs/scaled',
                  '--auto-scale-lr', '--cfg-options',
                  'auto_scale_lr.base_batch_size=16', *one_iteration)
    assert 'Scaling the original LR by 0.25' in result.stdout + result.stderr
    tool(workspace, 'train.py', DET, '--work-dir', 'work_dirs/unscaled',
         '--cfg-options', 'auto_scale_lr.base_batch_size=16', *one_iteration)
    (scaled, ) = [
        line for line in scalars_of(workspace / 'work_dirs/scaled')
        if 'lr' in line
    ]
    (unscaled, ) = [
        line for line in scalars_of(workspace / 'work_dirs/unscaled')
        if 'lr' in line
    ]
    assert scaled['lr'] == pytest.approx(0.25 * unscaled['lr'])


@pytest.mark.slow
def test_two_process_distributed_training(workspace):
    result = tool(workspace, 'dist_train.sh', SEG, '2', '--work-dir',
                  'work_dirs/dist_seg', *SHORT)
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert (workspace / 'work_dirs/dist_seg/iter_4.pth').is_file()


@pytest.mark.slow
def test_two_nodes_launched_on_one_machine(workspace):
    """dist_train.sh as on two machines (NNODES=2, NODE_RANK 0 and 1), one
    process each, both launchers here with MASTER_ADDR=127.0.0.1."""
    port = str(30500 + os.getpid() % 1000)
    launchers = []
    for node_rank in ('0', '1'):
        env = dict(
            os.environ,
            NNODES='2',
            NODE_RANK=node_rank,
            MASTER_ADDR='127.0.0.1',
            PORT=port)
        launchers.append(
            subprocess.Popen([
                'bash',
                str(REPO / 'tools/dist_train.sh'), SEG, '1', '--work-dir',
                'work_dirs/two_nodes', *SHORT
            ],
                             cwd=workspace,
                             env=env,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             text=True))
    logs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    for launcher, log in zip(launchers, logs):
        assert launcher.returncode == 0, log[-3000:]
    assert 'Distributed training: True' in logs[0]
    assert 'GPU number: 2' in logs[0]  # mmengine's name for the world size
    assert 'Iter(val) [' in logs[0] and 'mIoU' in logs[0]
    assert (workspace / 'work_dirs/two_nodes/iter_4.pth').is_file()


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


def test_data_roots_on_other_storage_are_left_to_the_dataset():
    dataset = dict(
        type='ADE20KDataset',
        data_root='data/nowhere',
        data_prefix=dict(img_path='images/training'),
        backend_args=dict(backend='petrel'))
    cfg = Config(dict(train_dataloader=dict(dataset=dataset)))
    check_data_roots(cfg, ['train_dataloader'])  # read through petrel
    dataset = cfg.train_dataloader.dataset
    dataset.backend_args = None
    for root in ('s3://bucket/ade', 'cluster:s3://bucket/ade',
                 'https://example.org/ade'):
        dataset.data_root = root
        check_data_roots(cfg, ['train_dataloader'])
    for backend_args in (None, dict(backend='local')):
        dataset.data_root, dataset.backend_args = 'data/nowhere', backend_args
        with pytest.raises(
                FileNotFoundError, match='data/nowhere does not exist'):
            check_data_roots(cfg, ['train_dataloader'])


@pytest.fixture
def http_data(workspace):
    """The workspace's data/ served over HTTP on 127.0.0.1; yields the URL."""
    port = 31500 + os.getpid() % 1000
    server = subprocess.Popen([
        sys.executable, '-m', 'http.server',
        str(port), '--bind', '127.0.0.1', '--directory',
        str(workspace / 'data')
    ],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}'
    import urllib.request
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f'{url}/toy_coco/', timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)
    yield url
    server.kill()
    server.wait()


@pytest.mark.slow
def test_training_reads_data_through_another_backend(workspace, http_data,
                                                     monkeypatch):
    """A config whose datasets name an http backend trains and evaluates
    from the served copy; its root is no local path."""
    root = f'{http_data}/toy_coco/'
    config = workspace / 'http_coco.py'
    config.write_text(
        textwrap.dedent(f"""
        _base_ = {DET!r}
        # The base configs set backend_args=None: replace it (_delete_).
        # Full URLs: mmengine's HTTP backend cannot join paths.
        train_dataloader = dict(
            dataset=dict(
                data_root={root!r},
                ann_file={root!r} + 'annotations/instances_train2017.json',
                data_prefix=dict(img={root!r} + 'train2017/'),
                backend_args=dict(_delete_=True, backend='http')))
        val_dataloader = dict(
            dataset=dict(
                data_root={root!r},
                ann_file={root!r} + 'annotations/instances_val2017.json',
                data_prefix=dict(img={root!r} + 'val2017/'),
                backend_args=dict(_delete_=True, backend='http')))
        test_dataloader = val_dataloader
        val_evaluator = dict(
            ann_file={root!r} + 'annotations/instances_val2017.json',
            backend_args=dict(_delete_=True, backend='http'))
        test_evaluator = val_evaluator
        """))
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.setenv(name, '127.0.0.1')
    result = tool(workspace, 'train.py', str(config), '--work-dir',
                  'work_dirs/http', *SHORT)
    log = result.stdout + result.stderr
    assert f'data_root {root} is read through the http backend' in log
    assert 'coco/bbox_mAP' in log
    assert (workspace / 'work_dirs/http/iter_4.pth').is_file()


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
