"""attn_impl='fused' against attn_impl='reference' for the layers and the
backbones: same parameters, same results, forward and backward. Without a
GPU the Triton kernels run in Triton's interpreter (tests/conftest.py)."""
import importlib.util
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from acmix_mm.models import ACmixResNet, ACmixSwinTransformer
from acmix_mm.models.layers import ACmix, ShiftWindowACmix
from acmix_mm.ops import local_attention, resolve_attn_impl
from acmix_reference import randomize_

ON_CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if ON_CUDA else 'cpu'
cuda_only = pytest.mark.skipif(not ON_CUDA, reason='needs a CUDA GPU')
needs_triton = pytest.mark.skipif(importlib.util.find_spec('triton') is None,
                                  reason='needs Triton')


def fused_and_reference(module_cls, *args, **kwargs):
    reference = randomize_(module_cls(*args, attn_impl='reference',
                                      **kwargs))
    fused = module_cls(*args, attn_impl='fused', **kwargs)
    fused.load_state_dict(reference.state_dict())
    return fused.to(DEVICE), reference.to(DEVICE)


def outputs_and_grads(module, inputs, *args):
    inputs = inputs.clone().requires_grad_()
    out = module(inputs, *args)
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device)
                .view_as(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [inputs] + list(module.parameters()))
    return outs, grads


def assert_same(fused, reference, inputs, *args, atol=1e-5, rtol=1e-4):
    fused_outs, fused_grads = outputs_and_grads(fused, inputs, *args)
    ref_outs, ref_grads = outputs_and_grads(reference, inputs, *args)
    for a, b in zip(fused_outs, ref_outs):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    names = ['input'] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, fused_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=name)


@needs_triton
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('size', [(3, 3), (7, 5)])
def test_acmix_fused_matches_reference(stride, size):
    fused, reference = fused_and_reference(ACmix, 8, 16, kernel_att=5,
                                           head=2, stride=stride)
    assert_same(fused, reference, torch.randn(2, 8, *size, device=DEVICE))


@pytest.mark.parametrize('shift', [0, 2])
@pytest.mark.parametrize('size', [(8, 12), (9, 10), (3, 3)])
def test_window_acmix_fused_matches_reference(shift, size):
    fused, reference = fused_and_reference(ShiftWindowACmix, 12, 3, 4,
                                           shift_size=shift)
    tokens = torch.randn(2, size[0] * size[1], 12, device=DEVICE)
    assert_same(fused, reference, tokens, size)


def test_swin_backbone_fused_matches_reference():
    kwargs = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                  window_size=4, drop_path_rate=0.)
    fused, reference = fused_and_reference(ACmixSwinTransformer, **kwargs)
    assert_same(fused, reference, torch.randn(1, 3, 45, 38, device=DEVICE),
                atol=1e-4, rtol=1e-3)


def test_auto_is_reference_on_cpu_and_fused_needs_supported_inputs():
    q = torch.randn(1, 2, 8, 5, 5)
    assert resolve_attn_impl('auto', q, q, q, 7, 1) == 'reference'
    odd = torch.randn(1, 2, 4, 5, 5)  # head_dim 4: below the kernels' 8
    with pytest.raises(RuntimeError, match="attn_impl='fused' cannot run.*"
                       'head_dim'):
        local_attention(odd, odd, odd, 7, 1, attn_impl='fused')
    layer = ACmix(8, 8, head=2, attn_impl='fused')  # head_dim 4
    with pytest.raises(RuntimeError, match='head_dim'):
        layer(torch.randn(1, 8, 6, 6))


@cuda_only
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16,
                                   torch.bfloat16])
def test_resnet_backbone_fused_matches_reference_on_cuda(dtype):
    fused, reference = fused_and_reference(ACmixResNet, 26, norm_eval=True)
    images = torch.randn(2, 3, 97, 130, device=DEVICE)
    tolerance = dict(atol=1e-4, rtol=1e-3) if dtype == torch.float32 else \
        dict(atol=5e-2, rtol=5e-2)
    with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
        assert_same(fused, reference, images, **tolerance)


@cuda_only
def test_swin_backbone_auto_uses_fused_path_on_cuda():
    model = ACmixSwinTransformer(depths=(1, 1, 1, 1)).to(DEVICE)
    layer = model.stages[0].blocks[0].attn
    calls = []
    original = layer._forward_fused
    layer._forward_fused = lambda *a: calls.append(1) or original(*a)
    model(torch.randn(1, 3, 64, 64, device=DEVICE))
    assert calls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, state: dict, images: torch.Tensor,
                results: dict) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    model = ACmixResNet(26, attn_impl='fused', norm_eval=True).cuda()
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    shard = images[rank::2].cuda()
    loss = sum(o.float().mean() for o in ddp(shard))
    loss.backward()
    if rank == 0:
        results['grads'] = {n: p.grad.cpu()
                            for n, p in model.named_parameters()}
    dist.destroy_process_group()


@cuda_only
def test_two_process_ddp_on_one_gpu_matches_single_process():
    model = randomize_(ACmixResNet(26, attn_impl='fused', norm_eval=True))
    images = torch.randn(4, 3, 64, 80)
    state = model.state_dict()
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(_free_port(), state, images, results),
             nprocs=2, join=True)

    single = model.cuda()
    # Each rank averages over its half: the DDP gradient is the mean of the
    # two half-batch gradients.
    losses = [sum(o.float().mean() for o in single(images[r::2].cuda()))
              for r in range(2)]
    (sum(losses) / 2).backward()
    for name, param in single.named_parameters():
        torch.testing.assert_close(results['grads'][name], param.grad.cpu(),
                                   atol=1e-5, rtol=1e-4, msg=name)
