import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from acmix_mm.testing import (build_model, num_classes_of, synthetic_batch,
                              train_and_predict)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob('configs/*/*.py'))


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_scoped_type_builds_without_custom_imports(scope):
    out = run_python(f"""
        import sys
        from mmengine.registry import MODELS, init_default_scope
        init_default_scope('{scope}')
        assert 'acmix_mm' not in sys.modules
        for cfg in (dict(type='acmix_mm.ACmixResNet', depth=26),
                    dict(type='acmix_mm.ACmixSwinTransformer',
                         depths=(1, 1, 1, 1))):
            model = MODELS.build(cfg)
            print(type(model).__module__, type(model).__name__)
        """)
    assert 'acmix_mm.models.backbones.acmix_resnet ACmixResNet' in out
    assert 'acmix_swin ACmixSwinTransformer' in out


def test_task_registries_build_scoped_types():
    out = run_python("""
        from mmdet.registry import MODELS as DET
        from mmseg.registry import MODELS as SEG
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmdet'):
            print(type(DET.build(dict(type='acmix_mm.ACmixResNet',
                                      depth=26))).__name__)
        with DefaultScope.overwrite_default_scope('mmseg'):
            print(type(SEG.build(dict(type='acmix_mm.ACmixSwinTransformer',
                                      depths=(1, 1, 1, 1)))).__name__)
        """)
    assert out.split() == ['ACmixResNet', 'ACmixSwinTransformer']


def test_custom_imports_also_works(tmp_path):
    config = tmp_path / 'cfg.py'
    config.write_text(
        textwrap.dedent("""
        default_scope = 'mmseg'
        custom_imports = dict(imports=['acmix_mm'],
                              allow_failed_imports=False)
        backbone = dict(type='acmix_mm.ACmixResNet', depth=38)
        """))
    out = run_python(f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        cfg = Config.fromfile({str(config)!r})
        assert 'acmix_mm' in sys.modules
        init_default_scope(cfg.default_scope)
        print(type(MODELS.build(cfg.backbone)).__name__)
        """)
    assert out.strip() == 'ACmixResNet'


def small_config(path: str) -> Config:
    cfg = Config.fromfile(str(REPO / path))
    if 'decode_head' in cfg.model:
        # Train on small crops rather than padding them to 512x512.
        cfg.model.data_preprocessor.size = (64, 64)
    if cfg.optim_wrapper.type == 'AmpOptimWrapper' and \
            not torch.cuda.is_available():
        # Mixed precision needs CUDA; the parameter groups are the same.
        cfg.optim_wrapper.type = 'OptimWrapper'
    return cfg


@pytest.mark.parametrize('path', CONFIGS)
@pytest.mark.slow
def test_config_builds_trains_one_step_and_predicts(path):
    cfg = small_config(path)
    model = build_model(cfg)
    scope = cfg.default_scope
    batch = synthetic_batch(
        scope,
        num_images=2,
        image_size=(64, 64),
        num_classes=num_classes_of(cfg))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_and_predict(model, cfg, batch)

    assert all(v == v and abs(v) != float('inf')
               for v in result['losses'].values()), result['losses']
    changed = [
        n for n, p in model.named_parameters()
        if not p.detach().equal(before[n])
    ]
    assert any(n.startswith('backbone.') for n in changed)
    assert any('.rate1' in n for n in changed)

    predictions = result['predictions']
    assert len(predictions) == 2
    if scope == 'mmdet':
        for sample in predictions:
            assert sample.pred_instances.bboxes.shape[1] == 4
            if len(sample.pred_instances):
                assert sample.pred_instances.masks.shape[1:] == (64, 64)
    else:
        for sample in predictions:
            assert sample.pred_sem_seg.data.shape == (1, 64, 64)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_excludes_rates_norms_and_positions_from_weight_decay(path):
    cfg = small_config(path)
    model = build_model(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {
        id(p): group['weight_decay']
        for group in optimizer.param_groups
        for p in group['params']
    }
    norm_types = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
    exempt, decayed = [], []
    for module_name, module in model.backbone.named_modules():
        for name, param in module.named_parameters(recurse=False):
            is_exempt = isinstance(module, norm_types) or name in (
                'rate1', 'rate2', 'relative_position_bias_table') or \
                module_name.endswith('conv_p')
            (exempt if is_exempt else decayed).append(
                (f'{module_name}.{name}', decay[id(param)]))
    assert exempt and all(d == 0 for _, d in exempt), \
        [n for n, d in exempt if d != 0]
    assert all(d > 0 for _, d in decayed), [n for n, d in decayed if d == 0]


SWIN_CONFIGS = [p for p in CONFIGS if 'acmix_swin/' in p]


@pytest.fixture(scope='module')
def swin_checkpoints(tmp_path_factory):
    """Per Swin depth: a reference-layout checkpoint and its converted
    copy (made by the converter tool)."""
    from acmix_reference import RefSwinACmix, randomize_
    folder = tmp_path_factory.mktemp('swin')
    made = {}

    def checkpoints(depths):
        if depths not in made:
            name = '-'.join(map(str, depths))
            reference = folder / f'reference_{name}.pth'
            converted = folder / f'converted_{name}.pth'
            model = randomize_(RefSwinACmix(depths=depths))
            torch.save({'model': model.state_dict()}, reference)
            subprocess.run([
                sys.executable,
                str(REPO / 'tools/model_converters/acmix_swin_to_mm.py'),
                str(reference),
                str(converted)
            ],
                           check=True,
                           capture_output=True)
            made[depths] = reference, converted
        return made[depths]

    return checkpoints


@pytest.mark.parametrize('path', SWIN_CONFIGS)
@pytest.mark.parametrize('which', ['reference', 'converted'])
@pytest.mark.slow
def test_swin_configs_load_released_and_converted_weights(
        path, which, swin_checkpoints):
    cfg = small_config(path)
    backbone = cfg.model.backbone
    reference, converted = swin_checkpoints(tuple(backbone.depths))
    if which == 'converted':
        backbone.init_cfg.checkpoint = str(converted)
    else:
        backbone.init_cfg.checkpoint = str(reference)
    model = build_model(cfg)
    model.init_weights()
    expected = torch.load(converted)['state_dict']
    state = model.backbone.state_dict()
    # Only the output norms of stages 0-2 have no pretrained counterpart.
    assert set(state) - set(expected) == {
        f'norm{i}.{p}'
        for i in range(3)
        for p in ('weight', 'bias')
    }
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_model_index_lists_every_config_once():
    """model-index.yml imports a metafile.yml per config folder, in the
    OpenMMLab format: every config is one model, every model's config
    exists."""
    import yaml
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    folders = sorted({str(Path(p).parent) for p in CONFIGS})
    assert sorted(index['Import']) == [f'{f}/metafile.yml' for f in folders]
    listed = []
    for metafile in index['Import']:
        meta = yaml.safe_load((REPO / metafile).read_text())
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            config = model['Config']
            assert (REPO / config).is_file(), f'{metafile}: {config} missing'
            assert str(Path(config).parent) == str(Path(metafile).parent)
            assert model['Name'] == Path(config).stem
            assert model['In Collection'] in collections
            metadata = model['Metadata']
            for key in ('Training Data', 'Training Resources', 'Architecture'):
                assert metadata.get(key), f'{model["Name"]}: no {key}'
            check_schedule(config, metadata)
            for result in model.get('Results', []):
                assert result['Task'] and result['Dataset'] and \
                    result['Metrics']
            listed.append(config)
    assert sorted(listed) == CONFIGS


def check_schedule(config: str, metadata: dict) -> None:
    """The metafile's batch size (per-device batch x the devices of
    Training Resources, e.g. '8x GPUs') and epochs or iterations are the
    config's."""
    cfg = Config.fromfile(str(REPO / config))
    devices = int(metadata['Training Resources'].split('x')[0])
    assert metadata['Batch Size'] == \
        devices * cfg.train_dataloader.batch_size, config
    if 'Epochs' in metadata:
        assert metadata['Epochs'] == cfg.train_cfg.max_epochs, config
    else:
        assert metadata['Iterations'] == cfg.train_cfg.max_iters, config
