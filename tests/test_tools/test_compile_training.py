"""Training with mmengine's compile (tools/train.py --compile) on the CPU:
the compiled train step runs, recompiles where mmseg's code needs it and
gives finite losses."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEG = str(REPO / 'configs/toy/acmix-r26-mini_upernet_toy-ade20k.py')


@pytest.mark.slow
def test_compiled_training_of_toy_segmentor(tmp_path):
    subprocess.run([
        sys.executable,
        str(REPO / 'tools/make_toy_data.py'), '--out-dir',
        str(tmp_path / 'data'), '--num-train', '4', '--num-val', '2',
        '--image-size', '64'
    ],
                   check=True,
                   capture_output=True)
    # Dynamo's own backend keeps the test to minutes; Inductor compiles the
    # same graphs (tens of minutes on 2 cores).
    command = [
        sys.executable,
        str(REPO / 'tools/train.py'), SEG, '--work-dir', 'work_dirs/compiled',
        '--compile', '--cfg-options', 'compile.backend=eager',
        'train_cfg.max_iters=3', 'train_cfg.val_interval=100',
        'default_hooks.logger.interval=1',
        'model.data_preprocessor.size=(64,64)'
    ]
    env = dict(os.environ, TORCH_LOGS='recompiles')
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'Model has been "compiled"' in log
    # Dynamo traced the train step: mmseg's heads share their loss code.
    assert 'Recompiling function loss_by_feat' in log
    (scalars, ) = (tmp_path /
                   'work_dirs/compiled').glob('*/vis_data/scalars.json')
    losses = [
        json.loads(line)['loss'] for line in scalars.read_text().splitlines()
        if 'loss' in json.loads(line)
    ]
    assert len(losses) == 3
    assert all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / 'work_dirs/compiled/iter_3.pth').is_file()
