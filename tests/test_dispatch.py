"""attn_impl='auto' falls back to the reference, with one warning per
reason, wherever the fused kernels cannot run; attn_impl='fused' raises a
RuntimeError naming the reason. Each case is simulated on the CPU: 'auto' is
made to prefer the fused kernels as it does for CUDA tensors, and the
kernels run in Triton's interpreter (tests/conftest.py)."""
import sys
import types
import warnings

import pytest
import torch

pytest.importorskip('triton')

from acmix_mm.models.layers import ACmix  # noqa: E402
from acmix_mm.ops import dispatch, triton_kernels  # noqa: E402
from acmix_mm.ops import local_attention, local_attention_reference  # noqa
from acmix_reference import randomize_  # noqa: E402

ON_CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if ON_CUDA else 'cpu'
FALLBACK = 'falls back to the reference'


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    """No failures or warnings recorded yet; 'auto' prefers the fused
    kernels as on CUDA; no pinned tuning config."""
    monkeypatch.setattr(dispatch, '_FAILED_VARIANTS', {})
    monkeypatch.setattr(dispatch, '_WARNED', set())
    monkeypatch.setattr(dispatch, 'fused_preferred', lambda q: True)
    monkeypatch.delenv(triton_kernels.TUNING_CONFIG_ENV,
                       raising=False)
    dispatch.triton_unavailable_reason.cache_clear()
    yield
    dispatch.triton_unavailable_reason.cache_clear()


def leaf_qkv(head_dim=8, dtype=torch.float32):
    """q, k, v (1, 2, head_dim, 6, 7) that require grad."""
    values = torch.randn(3, 1, 2, head_dim, 6, 7, dtype=dtype, device=DEVICE)
    return [t.requires_grad_() for t in values.unbind(0)]


def outputs_and_grads(attn_impl, q, k, v, kernel_size=3, stride=1):
    out = local_attention(q, k, v, kernel_size, stride, 0.5, attn_impl)
    grads = torch.autograd.grad((out * torch.arange(out.numel()).view_as(
        out).to(out)).sum(), (q, k, v))
    return out, grads


def assert_matches_reference(q, k, v, out, grads, kernel_size=3, stride=1):
    expected_out = local_attention_reference(q, k, v, kernel_size, stride,
                                             0.5)
    expected_grads = torch.autograd.grad(
        (expected_out * torch.arange(expected_out.numel()).view_as(
            expected_out).to(expected_out)).sum(), (q, k, v))
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-5)


def fallback_warnings(caught):
    return [str(w.message) for w in caught if FALLBACK in str(w.message)]


def auto_fallback_warnings(q, k, v, calls=3):
    """Run 'auto' ``calls`` times, each matching the reference; the
    fallback warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(calls):
            assert_matches_reference(q, k, v, *outputs_and_grads(
                'auto', q, k, v))
    return fallback_warnings(caught)


class FailingKernel:
    """Stands in for a compiled kernel that fails when launched, as a
    failed compilation pass reports it; counts the attempts."""

    def __init__(self):
        self.calls = 0

    def __getitem__(self, grid):

        def launch(*args, **kwargs):
            self.calls += 1
            raise RuntimeError('PassManager::run failed')

        return launch


def break_kernel(monkeypatch, name):
    kernel = FailingKernel()
    monkeypatch.setitem(triton_kernels._AUTOTUNED, name, kernel)
    return kernel


def test_auto_falls_back_once_when_a_kernel_fails_to_compile(monkeypatch):
    kernel = break_kernel(monkeypatch, 'forward')
    q, k, v = leaf_qkv()
    messages = auto_fallback_warnings(q, k, v)
    assert kernel.calls == 1  # the failed variant is not tried again
    assert len(messages) == 1
    assert 'forward kernel failed to compile or launch' in messages[0]
    assert 'PassManager::run failed' in messages[0]
    # Once known to fail, 'fused' names the reason before launching.
    with pytest.raises(RuntimeError, match="'fused' cannot run: the fused "
                       'forward kernel failed'):
        local_attention(q, k, v, 3, 1, 0.5, 'fused')


def test_fused_raises_when_a_kernel_fails(monkeypatch):
    break_kernel(monkeypatch, 'forward')
    q, k, v = leaf_qkv()
    with pytest.raises(RuntimeError, match='forward kernel failed to compile'
                       ' or launch.*PassManager'):
        local_attention(q, k, v, 3, 1, 0.5, 'fused')


def test_auto_falls_back_when_a_backward_kernel_fails(monkeypatch):
    kernel = break_kernel(monkeypatch, 'grad_key_value')
    q, k, v = leaf_qkv()
    messages = auto_fallback_warnings(q, k, v, calls=2)
    assert kernel.calls == 1
    assert len(messages) == 1 and 'grad_key_value kernel' in messages[0]


def test_fused_raises_when_a_backward_kernel_fails(monkeypatch):
    break_kernel(monkeypatch, 'grad_query')
    q, k, v = leaf_qkv()
    with pytest.raises(RuntimeError, match='grad_query kernel failed'):
        outputs_and_grads('fused', q, k, v)


def test_layer_with_auto_trains_through_a_failing_kernel(monkeypatch):
    break_kernel(monkeypatch, 'forward')
    reference = randomize_(ACmix(8, 16, kernel_att=5, head=2,
                                 attn_impl='reference')).to(DEVICE)
    auto = ACmix(8, 16, kernel_att=5, head=2, attn_impl='auto').to(DEVICE)
    auto.load_state_dict(reference.state_dict())
    images = torch.randn(2, 8, 7, 9, device=DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        outs = [layer(images) for layer in (auto, reference)]
        grads = [torch.autograd.grad(out.square().sum(), layer.parameters())
                 for out, layer in zip(outs, (auto, reference))]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert len(fallback_warnings(caught)) == 1


def test_old_triton_falls_back_or_raises(monkeypatch):
    version = '2.0.0'
    monkeypatch.setitem(sys.modules, 'triton',
                        types.SimpleNamespace(__version__=version))
    q, k, v = leaf_qkv()
    messages = auto_fallback_warnings(q, k, v)
    assert len(messages) == 1
    assert f'Triton {version} is older than 2.1' in messages[0]
    with pytest.raises(RuntimeError, match=f'Triton {version} is older'):
        local_attention(q, k, v, 3, 1, 0.5, 'fused')


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)
    q, k, v = leaf_qkv()
    with pytest.raises(RuntimeError, match='Triton is not installed'):
        local_attention(q, k, v, 3, 1, 0.5, 'fused')


def test_unsupported_head_dim_falls_back_with_one_warning():
    q, k, v = leaf_qkv(head_dim=4)  # the kernels need a multiple of 8
    messages = auto_fallback_warnings(q, k, v)
    assert len(messages) == 1 and 'head_dim' in messages[0]
    with pytest.raises(RuntimeError, match="'fused' cannot run.*head_dim"):
        local_attention(q, k, v, 3, 1, 0.5, 'fused')


def test_reference_never_warns(monkeypatch):
    break_kernel(monkeypatch, 'forward')
    q, k, v = leaf_qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert_matches_reference(q, k, v, *outputs_and_grads(
            'reference', q, k, v))
    assert not fallback_warnings(caught)


@pytest.mark.parametrize('text', ['4', '4,3', 'four,two'])
def test_bad_pinned_tuning_config_is_named(monkeypatch, text):
    monkeypatch.setenv(triton_kernels.TUNING_CONFIG_ENV, text)
    q, k, v = leaf_qkv()
    with pytest.raises(ValueError, match='ACMIX_TUNING_CONFIG must be one of'
                       " '4,1', '4,2', '8,1', '8,2'"):
        local_attention(q, k, v, 3, 1, 0.5, 'auto')
