import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from acmix_reference import RefResNetACmix, RefSwinACmix, randomize_
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import (CheckpointLoader, load_checkpoint,
                                        save_checkpoint)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from acmix_mm.models import ACmixResNet, ACmixSwinTransformer
from acmix_mm.testing import build_model
from acmix_mm.utils.checkpoint import (CheckpointMismatchError,
                                       InvalidCheckpointError,
                                       UntrustedCheckpointError,
                                       pop_module_weights,
                                       trust_local_checkpoints)

REPO = Path(__file__).resolve().parents[2]
SMALL_SWIN = dict(
    embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)


def stage_features(backbone):
    """Hook the Swin stages; returns the list their outputs are appended to
    as (B, C, H, W) before the output norms."""
    feats = []

    def hook(module, inputs, outputs):
        out, hw_shape = outputs[2], outputs[3]
        feats.append(out.transpose(1, 2).reshape(out.shape[0], -1, *hw_shape))

    for stage in backbone.stages:
        stage.register_forward_hook(hook)
    return feats


@pytest.fixture(scope='module')
def reference_swin_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize_(RefSwinACmix()).eval()
    path = tmp_path_factory.mktemp('ckpt') / 'acmix_swin_t_reference.pth'
    torch.save({'model': ref.state_dict(), 'epoch': 300}, path)
    return ref, path


def assert_close_features(ours, refs, tol):
    assert len(ours) == len(refs)
    for mine, theirs in zip(ours, refs):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, atol=tol, rtol=tol)


def test_swin_loads_reference_checkpoint_and_matches_at_224(
        reference_swin_checkpoint):
    ref, path = reference_swin_checkpoint
    model = ACmixSwinTransformer(
        arch='tiny',
        convert_weights=True,
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    model.eval()
    feats = stage_features(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        outs = model(x)
        expected = ref.stage_outputs(x)
    assert_close_features(feats, expected, 1e-4)
    # The reference's final norm becomes the last output norm.
    last = expected[3].flatten(2).transpose(1, 2)
    normed = ref.norm(last).transpose(1, 2).reshape(outs[3].shape)
    torch.testing.assert_close(outs[3], normed, atol=1e-4, rtol=1e-4)


def test_converter_tool_output_loads_without_conversion(
        reference_swin_checkpoint, tmp_path):
    ref, path = reference_swin_checkpoint
    out = tmp_path / 'converted.pth'
    tool = REPO / 'tools/model_converters/acmix_swin_to_mm.py'
    subprocess.run(
        [sys.executable, str(tool),
         str(path), str(out)],
        check=True,
        capture_output=True)
    # An existing output is never overwritten silently.
    again = subprocess.run(
        [sys.executable, str(tool),
         str(path), str(out)],
        capture_output=True,
        text=True)
    assert again.returncode != 0 and '--force' in again.stderr
    # The script reads checkpoints like the backbones do.
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(path.read_bytes()[:1000])
    failed = subprocess.run(
        [sys.executable,
         str(tool),
         str(broken),
         str(tmp_path / 'none.pth')],
        capture_output=True,
        text=True)
    assert failed.returncode != 0
    assert f'error: {broken} is not a valid checkpoint' in failed.stderr

    model = ACmixSwinTransformer(
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=str(out)))
    model.init_weights()
    model.eval()
    feats = stage_features(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)
        expected = ref.stage_outputs(x)
    assert_close_features(feats, expected, 1e-4)


@pytest.mark.parametrize('depth,layers', [(26, (1, 2, 4, 1)),
                                          (50, (3, 4, 6, 3))])
def test_resnet_loads_reference_checkpoint(depth, layers, tmp_path):
    ref = randomize_(RefResNetACmix(layers)).eval()
    path = tmp_path / 'reference_resnet.pth'
    # As written by a DataParallel training script.
    torch.save(
        {
            'state_dict': {
                f'module.{k}': v
                for k, v in ref.state_dict().items()
            }
        }, path)
    model = ACmixResNet(
        depth, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    assert set(model.state_dict()) == {
        k
        for k in ref.state_dict() if not k.startswith('fc.')
    }
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert_close_features(list(model(x)), ref.stage_outputs(x), 1e-4)


@pytest.mark.parametrize('depth,expected', [(26, 10.6e6), (38, 14.6e6),
                                            (50, 18.6e6)])
def test_resnet_parameter_counts_match_the_paper(depth, expected):
    layers = ACmixResNet.arch_settings[depth][1]
    with_fc = sum(p.numel() for p in RefResNetACmix(layers).parameters())
    ours = sum(p.numel() for p in ACmixResNet(depth).parameters())
    assert ours == with_fc - (2048 * 1000 + 1000)
    assert abs(with_fc - expected) / expected < 0.02


@pytest.mark.parametrize('size', [(511, 511), (112, 137), (32, 32)])
@pytest.mark.parametrize('name', ['resnet', 'swin'])
def test_output_shapes_for_any_input_size(name, size):
    if name == 'resnet':
        model, channels = ACmixResNet(50), [256, 512, 1024, 2048]
    else:
        model, channels = ACmixSwinTransformer(), [96, 192, 384, 768]
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape == (1, channels[i], math.ceil(size[0] / stride),
                             math.ceil(size[1] / stride))
        assert torch.isfinite(out).all()


def test_out_indices_select_outputs():
    model = ACmixSwinTransformer(**SMALL_SWIN, out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256]
    assert not hasattr(model, 'norm0')
    outs = ACmixResNet(
        26, out_indices=(0, 2)).eval()(
            torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 1024]


def frozen_and_trainable(model):
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return frozen, set(dict(model.named_parameters())) - frozen


def test_resnet_frozen_stages():
    model = ACmixResNet(26, frozen_stages=2, norm_eval=False)
    model.train()
    frozen, trainable = frozen_and_trainable(model)
    assert frozen == {
        n
        for n in frozen
        if n.startswith(('conv1.', 'bn1.', 'layer1.', 'layer2.'))
    }
    assert any(n.startswith('layer2.1.conv2.rate1') for n in frozen)
    assert all(n.startswith(('layer3.', 'layer4.')) for n in trainable)
    assert not model.layer2.training and model.layer3.training
    assert not model.bn1.training


def test_swin_frozen_stages():
    model = ACmixSwinTransformer(**SMALL_SWIN, frozen_stages=2)
    model.train()
    frozen, trainable = frozen_and_trainable(model)
    frozen_prefixes = ('patch_embed.', 'stages.0.', 'stages.1.', 'norm0.',
                       'norm1.')
    assert frozen and all(n.startswith(frozen_prefixes) for n in frozen)
    assert all(not n.startswith(frozen_prefixes) for n in trainable)
    assert 'stages.1.blocks.1.attn.rate2' in frozen
    assert not model.stages[1].training and model.stages[2].training


@pytest.mark.parametrize('norm_eval', [True, False])
def test_resnet_norm_eval(norm_eval):
    model = ACmixResNet(26, norm_eval=norm_eval)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert all(m.training != norm_eval for m in norms)
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, model.bn1.running_mean) == norm_eval


@pytest.mark.parametrize('name', ['resnet', 'swin'])
def test_with_cp_gives_identical_outputs_and_gradients(name):

    def build(with_cp):
        torch.manual_seed(1)
        if name == 'resnet':
            model = ACmixResNet(26, with_cp=with_cp, norm_eval=False)
        else:
            model = ACmixSwinTransformer(
                **SMALL_SWIN, drop_path_rate=0.2, with_cp=with_cp)
        model.init_weights()
        return model.train()

    x = torch.randn(2, 3, 48, 56)
    results = []
    for with_cp in (False, True):
        model = build(with_cp)
        torch.manual_seed(2)  # same drop-path draws
        outs = model(x.clone().requires_grad_())
        sum((o * o).mean() for o in outs).backward()
        results.append((outs, {
            n: p.grad
            for n, p in model.named_parameters() if p.grad is not None
        }))
    (outs_plain, grads_plain), (outs_cp, grads_cp) = results
    for a, b in zip(outs_plain, outs_cp):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert grads_plain.keys() == grads_cp.keys()
    for key in grads_plain:
        torch.testing.assert_close(
            grads_cp[key], grads_plain[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize('name', ['resnet', 'swin'])
def test_checkpoint_save_and_load_round_trip(name, tmp_path):
    build = (lambda: ACmixResNet(26)) if name == 'resnet' else \
        (lambda: ACmixSwinTransformer(**SMALL_SWIN))
    model = randomize_(build()).eval()
    path = tmp_path / 'backbone.pth'
    save_checkpoint(
        {
            'state_dict': model.state_dict(),
            'meta': dict(epoch=3, mmengine_version='0.10.7')
        }, str(path))
    restored = build()
    load_checkpoint(restored, str(path), strict=True)
    restored.eval()
    x = torch.randn(1, 3, 40, 40)
    for a, b in zip(model(x), restored(x)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    # A full detector checkpoint ('backbone.' keys) initialises a backbone.
    detector = tmp_path / 'detector.pth'
    torch.save(
        {
            'state_dict': {
                f'backbone.{k}': v
                for k, v in model.state_dict().items()
            },
            'meta': {}
        }, detector)
    fresh = build()
    fresh.init_cfg = dict(type='Pretrained', checkpoint=str(detector))
    fresh.init_weights()
    fresh.eval()
    for a, b in zip(model(x), fresh(x)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_pretrained_checkpoint_of_another_model_is_rejected(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save(ACmixResNet(26).state_dict(), path)
    model = ACmixSwinTransformer(
        **SMALL_SWIN, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match='holds no weights'):
        model.init_weights()

    swin = tmp_path / 'swin.pth'
    torch.save(ACmixSwinTransformer(**SMALL_SWIN).state_dict(), swin)
    bigger = ACmixSwinTransformer(
        init_cfg=dict(type='Pretrained', checkpoint=str(swin)))
    with pytest.raises(ValueError, match='shape mismatch'):
        bigger.init_weights()


def test_missing_checkpoint_file_names_the_path(tmp_path):
    missing = tmp_path / 'nowhere.pth'
    model = ACmixResNet(
        26, init_cfg=dict(type='Pretrained', checkpoint=str(missing)))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        model.init_weights()


def test_relative_position_tables_are_resized_for_another_window(tmp_path):
    source = randomize_(ACmixSwinTransformer(**SMALL_SWIN))
    path = tmp_path / 'w4.pth'
    torch.save(source.state_dict(), path)
    target = ACmixSwinTransformer(
        **dict(SMALL_SWIN, window_size=6),
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    target.init_weights()
    table = target.stages[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (11 * 11, 1)
    torch.testing.assert_close(target.stages[0].blocks[0].attn.qkv.weight,
                               source.stages[0].blocks[0].attn.qkv.weight)


@pytest.mark.parametrize('name', ['resnet', 'swin'])
def test_bad_inputs_raise_clear_errors(name):
    model = ACmixResNet(26) if name == 'resnet' else \
        ACmixSwinTransformer(**SMALL_SWIN)
    cls = type(model).__name__
    with pytest.raises(ValueError, match=f'{cls}.*in_channels=3.*1 channels'):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=f'{cls} expects a 4D.*3D'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match='torch.Tensor'):
        model([torch.randn(3, 32, 32)])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown depth 101.*26, 38, 50"):
        ACmixResNet(101)
    with pytest.raises(ValueError, match='dilation'):
        ACmixResNet(50, dilations=(1, 1, 2, 4))
    with pytest.raises(ValueError, match="unknown arch 'huge'"):
        ACmixSwinTransformer(arch='huge')
    with pytest.raises(ValueError, match='one entry per stage'):
        ACmixSwinTransformer(depths=(2, 2), num_heads=(3, 6, 12, 24))
    with pytest.raises(ValueError, match='divisible by num_heads'):
        ACmixSwinTransformer(embed_dims=100)


def test_arch_presets_and_overrides():
    small = ACmixSwinTransformer(arch='small')
    assert len(small.stages[2].blocks) == 18
    base = ACmixSwinTransformer(arch='base')
    assert base.num_features == [128, 256, 512, 1024]
    custom = ACmixSwinTransformer(
        arch='base', embed_dims=64, num_heads=(2, 4, 8, 16))
    assert custom.num_features == [64, 128, 256, 512]
    assert custom.stages[0].blocks[0].attn.num_heads == 2


LAYOUT_V01 = json.loads(
    (REPO / 'tests/fixtures/checkpoint_layout_v0.1.json').read_text())
TOY_CONFIGS = {
    'toy-det': REPO / 'configs/toy/mask-rcnn_acmix-swin-mini_fpn_toy-coco.py',
    'toy-seg': REPO / 'configs/toy/acmix-r26-mini_upernet_toy-ade20k.py',
}


class Holder(nn.Module):
    """A stand-in for a detector: the backbone under ``backbone.``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Linear(2, 2)


def random_weights(shapes: dict) -> dict:
    torch.manual_seed(0)
    return {
        key: torch.randn(shape) if len(shape) else torch.tensor(7)
        for key, shape in shapes.items()
    }


@pytest.fixture
def trusted_local_files(monkeypatch):
    """trust_local_checkpoints() for one test (as the scripts call it)."""
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        dict(CheckpointLoader._schemes))
    trust_local_checkpoints()


@pytest.mark.parametrize('toy', ['toy-det', 'toy-seg'])
def test_version_0_1_work_dir_checkpoint_loads_into_whole_model(
        toy, tmp_path, trusted_local_files):
    model = build_model(Config.fromfile(str(TOY_CONFIGS[toy])))
    backbone = random_weights(LAYOUT_V01[f'{toy} backbone'])
    state_dict = {
        key: value
        for key, value in model.state_dict().items()
        if not key.startswith('backbone.')
    }
    state_dict.update(
        (f'backbone.{key}', value) for key, value in backbone.items())
    message_hub = MessageHub.get_instance(f'v01-{toy}')
    message_hub.update_scalar('train/loss', np.float64(1.5))
    path = tmp_path / 'iter_4.pth'
    # What Runner.save_checkpoint of version 0.1 wrote.
    torch.save(
        {
            'meta':
            dict(
                epoch=0,
                iter=4,
                mmengine_version='0.10.7',
                seed=0,
                experiment_name=toy),
            'state_dict':
            state_dict,
            'message_hub':
            message_hub.state_dict(),
            'optimizer': {
                'state': {},
                'param_groups': []
            },
            'param_schedulers': []
        }, path)

    fresh = build_model(Config.fromfile(str(TOY_CONFIGS[toy])))
    load_checkpoint(fresh, str(path), strict=True)
    for key, value in fresh.backbone.state_dict().items():
        torch.testing.assert_close(
            value, backbone[key], atol=0, rtol=0, msg=key)


def test_version_0_1_converted_swin_loads_through_pretrained(tmp_path):
    weights = random_weights(LAYOUT_V01['acmix-swin-t converted'])
    path = tmp_path / 'acmix_swin_tiny_mm.pth'
    torch.save({'state_dict': weights}, path)
    model = ACmixSwinTransformer(
        arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    state = model.state_dict()
    assert set(state) - set(weights) == {
        f'norm{i}.{p}'
        for i in range(3)
        for p in ('weight', 'bias')
    }
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=key)


def test_reference_layout_and_table_resize_through_load_from(
        reference_swin_checkpoint, tmp_path):
    ref, path = reference_swin_checkpoint
    # A whole model whose backbone weights are the reference's own keys.
    whole = tmp_path / 'reference_in_detector.pth'
    torch.save(
        {
            'state_dict': {
                f'backbone.{key}': value
                for key, value in ref.state_dict().items()
            }
        }, whole)
    holder = Holder(ACmixSwinTransformer(drop_path_rate=0.))
    load_checkpoint(holder, str(whole))
    expected = ACmixSwinTransformer(
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    expected.init_weights()
    for key, value in expected.state_dict().items():
        assert torch.equal(holder.backbone.state_dict()[key], value), key

    # Window 4 -> 6: the relative position tables are resized on load.
    source = Holder(randomize_(ACmixSwinTransformer(**SMALL_SWIN)))
    small = tmp_path / 'w4_detector.pth'
    save_checkpoint({'state_dict': source.state_dict()}, str(small))
    target = Holder(ACmixSwinTransformer(**dict(SMALL_SWIN, window_size=6)))
    load_checkpoint(target, str(small), strict=True)
    attn = target.backbone.stages[0].blocks[0].attn
    assert attn.relative_position_bias_table.shape == (11 * 11, 1)
    torch.testing.assert_close(
        attn.qkv.weight, source.backbone.stages[0].blocks[0].attn.qkv.weight)


def test_wrapper_prefixes_are_removed():
    state_dict = {'backbone.module.conv1.weight': 1, 'neck.x': 2}
    assert pop_module_weights(state_dict, 'backbone.') == {'conv1.weight': 1}
    assert state_dict == {'neck.x': 2}
    whole_ddp = {'module.backbone.conv1.weight': 1, 'module.neck.x': 2}
    assert pop_module_weights(whole_ddp, '') == {'conv1.weight': 1}


R26_INTO_R50 = ('layer1.1, layer1.2, layer2.2, layer2.3, layer3.4, layer3.5, '
                'layer4.1, layer4.2')


def test_shallower_resnet_checkpoint_is_an_error_unless_partial(tmp_path):
    r26 = randomize_(ACmixResNet(26, base_channels=16))
    path = tmp_path / 'r26.pth'
    torch.save({'state_dict': r26.state_dict()}, path)
    pretrained = dict(type='Pretrained', checkpoint=str(path))

    r50 = ACmixResNet(50, base_channels=16, init_cfg=pretrained)
    with pytest.raises(CheckpointMismatchError) as error:
        r50.init_weights()
    message = str(error.value)
    assert message.startswith(f'{path}: the checkpoint has no weights for '
                              f'these parts of ACmixResNet: {R26_INTO_R50}.')
    assert 'allow_partial_checkpoint=True' in message
    assert 'tools/' not in message

    # The same check guards load_from of a whole model.
    whole = tmp_path / 'r26_detector.pth'
    torch.save({'state_dict': Holder(r26).state_dict()}, whole)
    with pytest.raises(CheckpointMismatchError, match=R26_INTO_R50):
        load_checkpoint(Holder(ACmixResNet(50, base_channels=16)), str(whole))

    partial = ACmixResNet(
        50,
        base_channels=16,
        init_cfg=pretrained,
        allow_partial_checkpoint=True)
    untouched = partial.layer3[5].conv1.weight.clone()
    partial.init_weights()
    assert torch.equal(partial.layer3[3].conv2.rate1,
                       r26.layer3[3].conv2.rate1)
    assert torch.equal(partial.layer3[5].conv1.weight, untouched)


def test_swin_checkpoint_of_fewer_blocks_names_them(tmp_path):
    path = tmp_path / 'shallow.pth'
    torch.save(ACmixSwinTransformer(**SMALL_SWIN).state_dict(), path)
    deeper = ACmixSwinTransformer(
        **dict(SMALL_SWIN, depths=(2, 2, 4, 2)),
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(
            CheckpointMismatchError,
            match=r'ACmixSwinTransformer: stages\.2\.blocks\.2, '
            r'stages\.2\.blocks\.3\.'):
        deeper.init_weights()


@pytest.mark.parametrize(
    'damage', ['truncated', 'garbage', 'empty', 'tensor', 'no tensors'])
@pytest.mark.parametrize('trusted', [False, True])
def test_unreadable_checkpoints_are_not_valid(damage, trusted, tmp_path,
                                              monkeypatch):
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        dict(CheckpointLoader._schemes))
    if trusted:
        trust_local_checkpoints()
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': ACmixResNet(26).state_dict()}, good)
    path = tmp_path / f'{damage}.pth'
    content = {
        'truncated': good.read_bytes()[:good.stat().st_size // 2],
        'garbage': b'<html>404 Not Found</html>' * 40,
        'empty': b'',
    }
    if damage in content:
        path.write_bytes(content[damage])
    else:
        torch.save(
            torch.zeros(3) if damage == 'tensor' else {'epoch': 3}, path)
    model = ACmixResNet(
        26, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(
            InvalidCheckpointError, match=f'{path} is not a valid checkpoint'):
        model.init_weights()
    if trusted and damage in content:  # the scripts' load_from route
        with pytest.raises(
                InvalidCheckpointError,
                match=f'{path} is not a valid checkpoint'):
            load_checkpoint(Holder(ACmixResNet(26)), str(path))


def test_checkpoint_with_objects_asks_for_trust(tmp_path, monkeypatch):
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        dict(CheckpointLoader._schemes))
    path = tmp_path / 'with_numpy.pth'
    torch.save(
        {
            'state_dict': ACmixResNet(26).state_dict(),
            'meta': {
                'hist': np.zeros(3)
            }
        }, path)
    model = ACmixResNet(
        26, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(UntrustedCheckpointError) as error:
        model.init_weights()
    message = str(error.value)
    assert 'acmix_mm.utils.trust_local_checkpoints()' in message
    assert 'numpy' in message and 'tools/' not in message
    trust_local_checkpoints()
    model.init_weights()
