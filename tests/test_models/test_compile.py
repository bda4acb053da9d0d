"""torch.compile(backbone, fullgraph=True) on the CPU gives the eager
results, forward and backward: the backend decision is a constant to the
compiler, so the graph holds only the chosen backend."""
import pytest
import torch
from acmix_reference import randomize_

from acmix_mm.models import ACmixResNet, ACmixSwinTransformer

# Small backbones like the toy configs' (configs/toy/); two ResNet stages
# (strided ACmix included) keep Inductor's compile time on the CPU short.
BACKBONES = {
    'resnet':
    lambda conv_path: ACmixResNet(
        26,
        base_channels=16,
        head=2,
        num_stages=2,
        strides=(1, 2),
        dilations=(1, 1),
        out_indices=(0, 1),
        conv_path=conv_path,
        init_cfg=None),
    'swin':
    lambda conv_path: ACmixSwinTransformer(
        embed_dims=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 4),
        window_size=4,
        conv_path=conv_path),
}


def outputs_and_grads(model, images):
    outs = model(images)
    loss = sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
               for out in outs)
    return outs, torch.autograd.grad(loss, list(model.parameters()))


# 'aot_eager' traces as Inductor does (Dynamo, AOTAutograd) without
# generating C++. Inductor itself runs on the Swin backbone only: its C++
# code generation for the ResNet one takes over 15 minutes on 2 cores.
CASES = [
    pytest.param(
        name, 'aot_eager', conv_path, id=f'{name}-aot_eager-{conv_path}')
    for name in sorted(BACKBONES) for conv_path in ('folded', 'as_written')
] + [
    pytest.param(
        'swin',
        'inductor',
        'folded',
        id='swin-inductor-folded',
        marks=pytest.mark.slow)
]


@pytest.mark.parametrize('name,backend,conv_path', CASES)
def test_compiled_fullgraph_matches_eager(name, backend, conv_path):
    torch._dynamo.reset()
    model = randomize_(BACKBONES[name](conv_path)).eval()
    images = torch.randn(2, 3, 64, 48)
    expected_outs, expected_grads = outputs_and_grads(model, images)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    outs, grads = outputs_and_grads(compiled, images)
    for out, expected in zip(outs, expected_outs):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
