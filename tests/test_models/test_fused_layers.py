"""The fast backends ('triton' for ACmix, 'sdpa' for ShiftWindowACmix, the
convolution path folded) against attn_impl='reference' with the convolution
path as written, for the layers and the backbones: same parameters, same
results, forward and backward. Without a
GPU the Triton kernels run in Triton's interpreter (tests/conftest.py).
float32 comparisons run with TF32 off (cuDNN uses it by default on CUDA)."""
import importlib.util
import socket

import pytest
import torch
import torch.multiprocessing as mp
from acmix_reference import randomize_
from ddp_gradients import ddp_gradients_worker

from acmix_mm.models import ACmixResNet, ACmixSwinTransformer
from acmix_mm.models.layers import ACmix, ShiftWindowACmix
from acmix_mm.ops import LOCAL_ATTENTION, choose_backend, local_attention

ON_CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if ON_CUDA else 'cpu'
cuda_only = pytest.mark.skipif(not ON_CUDA, reason='needs a CUDA GPU')
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec('triton') is None, reason='needs Triton')


@pytest.fixture(autouse=True)
def float32_without_tf32():
    """Exact float32 convolutions and matmuls, as on the CPU."""
    flags = (torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 \
        = flags


FAST_BACKEND = {
    ACmix: 'triton',
    ACmixResNet: 'triton',
    ShiftWindowACmix: 'sdpa',
    ACmixSwinTransformer: 'sdpa'
}


def fused_and_reference(module_cls, *args, **kwargs):
    reference = randomize_(
        module_cls(
            *args, attn_impl='reference', conv_path='as_written', **kwargs))
    fused = module_cls(
        *args,
        attn_impl=FAST_BACKEND[module_cls],
        conv_path='folded',
        **kwargs)
    fused.load_state_dict(reference.state_dict())
    return fused.to(DEVICE), reference.to(DEVICE)


def outputs_and_grads(module, inputs, *args):
    inputs = inputs.clone().requires_grad_()
    out = module(inputs, *args)
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum(
        (o.float() *
         torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
        for o in outs)
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
    fused, reference = fused_and_reference(
        ACmix, 8, 16, kernel_att=5, head=2, stride=stride)
    assert_same(fused, reference, torch.randn(2, 8, *size, device=DEVICE))


@needs_triton
@pytest.mark.parametrize('stride', [1, 2])
def test_acmix_hands_the_slot_kernels_head_contiguous_keys_and_values(
        monkeypatch, stride):
    """With the Triton backend the layer's keys (k - pe) and values come
    laid out with channel stride 1 where the kernels load them as vectors
    (the slot design), channel-major to the region kernels."""
    from acmix_mm.ops import triton as triton_backend
    from acmix_mm.ops.triton_kernels import available_designs
    channel_strides = []
    run = triton_backend.local_attention

    def recording_strides(q, k, v, *args, **kwargs):
        channel_strides.append((q.stride(2), k.stride(2), v.stride(2)))
        return run(q, k, v, *args, **kwargs)

    monkeypatch.setattr(triton_backend, 'local_attention', recording_strides)
    layer = ACmix(
        8, 16, kernel_att=5, head=2, stride=stride, attn_impl='triton')
    layer.to(DEVICE)(torch.randn(1, 8, 5, 6, device=DEVICE))
    head_contiguous = triton_backend.loads_vectors(8, stride)
    assert head_contiguous == (stride == 1 and 'slot' in available_designs())
    (q_stride, k_stride, v_stride), = channel_strides
    assert (k_stride == 1, v_stride == 1) == (head_contiguous, ) * 2
    # q stays a slice of the projection (channel stride 3 * heads * H * W),
    # which the folded conv path reads grouped by channel.
    assert q_stride == 3 * 2 * 5 * 6


@pytest.mark.parametrize('shift', [0, 2])
@pytest.mark.parametrize('size', [(8, 12), (9, 10), (3, 3)])
def test_window_acmix_fused_matches_reference(shift, size):
    fused, reference = fused_and_reference(
        ShiftWindowACmix, 12, 3, 4, shift_size=shift)
    tokens = torch.randn(2, size[0] * size[1], 12, device=DEVICE)
    assert_same(fused, reference, tokens, size)


def test_swin_backbone_fused_matches_reference():
    kwargs = dict(
        embed_dims=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        drop_path_rate=0.)
    fused, reference = fused_and_reference(ACmixSwinTransformer, **kwargs)
    assert_same(
        fused,
        reference,
        torch.randn(1, 3, 45, 38, device=DEVICE),
        atol=1e-4,
        rtol=1e-3)


def test_auto_is_reference_on_cpu_and_triton_needs_supported_inputs():
    assert choose_backend(LOCAL_ATTENTION, 'auto', 'cpu', torch.float32, 8, 7,
                          1).backend == 'reference'
    odd = torch.randn(1, 2, 4, 5, 5)  # head_dim 4: below the kernels' 8
    with pytest.raises(
            RuntimeError, match="attn_impl='triton' cannot run.*"
            'head_dim'):
        local_attention(odd, odd, odd, 7, 1, attn_impl='triton')
    layer = ACmix(8, 8, head=2, attn_impl='triton')  # head_dim 4
    with pytest.raises(RuntimeError, match='head_dim'):
        layer(torch.randn(1, 8, 6, 6))


def max_errors(outs, grads, true_outs, true_grads):
    """Largest absolute error of each output and gradient."""
    return [(a.float() - b.float()).abs().max().item() for a, b in zip(
        list(outs) + list(grads),
        list(true_outs) + list(true_grads))]


@cuda_only
def test_resnet_backbone_fused_matches_reference_on_cuda():
    fused, reference = fused_and_reference(ACmixResNet, 26, norm_eval=True)
    images = torch.randn(2, 3, 97, 130, device=DEVICE)
    assert_same(fused, reference, images, atol=1e-4, rtol=1e-3)


@cuda_only
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_resnet_backbone_fused_under_autocast_on_cuda(dtype):
    """Under autocast the fused path is at most twice as far from the
    float32 result as the reference path under the same autocast."""
    fused, reference = fused_and_reference(ACmixResNet, 26, norm_eval=True)
    images = torch.randn(2, 3, 97, 130, device=DEVICE)
    truth = outputs_and_grads(reference, images)
    with torch.autocast('cuda', dtype=dtype):
        reference_errors = max_errors(*outputs_and_grads(reference, images),
                                      *truth)
        fused_errors = max_errors(*outputs_and_grads(fused, images), *truth)
    names = ['out'] * len(truth[0]) + ['input'] + \
        [n for n, _ in fused.named_parameters()]
    for name, fused_error, reference_error in zip(names, fused_errors,
                                                  reference_errors):
        assert fused_error <= 2 * reference_error + 1e-6, \
            f'{name}: fused {fused_error:.3g} vs reference ' \
            f'{reference_error:.3g}'


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


@pytest.mark.parametrize('device',
                         ['cpu', pytest.param('cuda', marks=cuda_only)])
@pytest.mark.slow
def test_two_process_ddp_matches_single_process(device):
    """attn_impl='auto' (fused on CUDA, reference on the CPU) under DDP with
    2 spawned processes gives the gradients of one process."""
    model = randomize_(ACmixResNet(26, norm_eval=True))
    images = torch.randn(4, 3, 64, 80)
    state = model.state_dict()
    results = mp.Manager().dict()
    mp.spawn(
        ddp_gradients_worker,
        args=(_free_port(), device, state, images, results),
        nprocs=2,
        join=True)

    single = model.to(device)
    # Each rank averages over its half: the DDP gradient is the mean of the
    # two half-batch gradients.
    losses = [
        sum(o.float().mean() for o in single(images[r::2].to(device)))
        for r in range(2)
    ]
    (sum(losses) / 2).backward()
    for name, param in single.named_parameters():
        torch.testing.assert_close(
            results['grads'][name],
            param.grad.cpu(),
            atol=1e-5,
            rtol=1e-4,
            msg=name)
