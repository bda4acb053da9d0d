"""The one choice of attention backend (acmix_mm.ops.dispatch).

'auto' takes the first backend of its order that can run and warns once per
reason when it skips one; a named backend runs or raises a RuntimeError
naming the reason; 'fused' and backends of the other op raise ValueError.
The CUDA fallbacks are simulated on the CPU: 'auto' is given the CUDA order
and the Triton kernels run in Triton's interpreter (tests/conftest.py)."""
import sys
import types
import warnings

import pytest
import torch
from acmix_reference import randomize_

from acmix_mm.models.layers import ACmix
from acmix_mm.ops import (BACKENDS, LOCAL_ATTENTION, WINDOW_ATTENTION,
                          choose_backend, dispatch, local_attention,
                          local_attention_reference)
from acmix_mm.ops import triton as triton_backend
from acmix_mm.ops import window_attention, window_attention_reference

FALLBACK = "'auto' does not run"
RUN_TIME_FALLBACK = 'falls back to the reference'
CUDA_ORDER = ('triton', 'flex', 'reference')


@pytest.fixture(autouse=True)
def fresh_dispatch(monkeypatch):
    """No decisions, failures or warnings recorded yet."""
    monkeypatch.setattr(dispatch, '_WARNED', set())
    monkeypatch.setattr(triton_backend, '_FAILED_VARIANTS', {})
    dispatch.clear_decisions()
    triton_backend.triton_unavailable_reason.cache_clear()
    yield
    dispatch.clear_decisions()
    triton_backend.triton_unavailable_reason.cache_clear()


def cuda_order_on_cpu(monkeypatch, order=CUDA_ORDER):
    """'auto' tries the backends as on CUDA (or in ``order``)."""
    monkeypatch.setitem(dispatch.AUTO_ORDER, (LOCAL_ATTENTION, 'cpu'), order)


def leaf_qkv(head_dim=8):
    """q, k, v (1, 2, head_dim, 6, 7) that require grad."""
    return [t.requires_grad_() for t in torch.randn(3, 1, 2, head_dim, 6, 7)]


def outputs_and_grads(attention, q, k, v):
    out = attention(q, k, v, 3, 1, 0.5)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    return out, torch.autograd.grad((out * weights).sum(), (q, k, v))


def assert_matches_reference(q, k, v, attn_impl):
    out, grads = outputs_and_grads(
        lambda *args: local_attention(*args, attn_impl=attn_impl), q, k, v)
    expected_out, expected_grads = outputs_and_grads(local_attention_reference,
                                                     q, k, v)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-5)


def auto_warnings(q, k, v, calls=3):
    """Run 'auto' ``calls`` times, each matching the reference; the
    warnings of skipped backends and run-time fallbacks it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(calls):
            assert_matches_reference(q, k, v, 'auto')
    return [
        str(w.message) for w in caught
        if FALLBACK in str(w.message) or RUN_TIME_FALLBACK in str(w.message)
    ]


# ------------------------------------------------------------ 'auto' on CPU


def test_auto_on_cpu_is_the_reference_for_local_attention():
    decision = choose_backend(LOCAL_ATTENTION, 'auto', 'cpu', torch.float32,
                              16, 7, 1, True)
    assert decision.backend == 'reference'
    assert dict(decision.rejected).keys() == {'triton', 'flex'}
    assert all("'auto' does not use it on the CPU" in reason
               for _, reason in decision.rejected)
    assert 'runs reference' in decision.explain()


def test_auto_on_cpu_is_sdpa_for_window_attention():
    decision = choose_backend(WINDOW_ATTENTION, 'auto', 'cpu', torch.float32,
                              32)
    assert decision.backend == 'sdpa'
    assert decision.rejected == (('reference', "'auto' prefers sdpa"), )


def test_decision_is_made_once_per_call_site():
    args = (LOCAL_ATTENTION, 'auto', 'cpu', torch.float32, 16, 7, 1, False)
    assert choose_backend(*args) is choose_backend(*args)
    assert dispatch._decide.cache_info().misses == 1


def test_cpu_auto_never_warns():
    q, k, v = leaf_qkv()
    assert auto_warnings(q, k, v) == []


# ------------------------------------------- 'auto' fallbacks, one warning


def test_missing_triton_falls_back_with_one_warning(monkeypatch):
    cuda_order_on_cpu(monkeypatch, ('triton', 'reference'))
    monkeypatch.setitem(sys.modules, 'triton', None)
    q, k, v = leaf_qkv()
    messages = auto_warnings(q, k, v)
    assert len(messages) == 1
    assert 'with triton: Triton is not installed' in messages[0]


def test_old_triton_falls_back_with_one_warning(monkeypatch):
    cuda_order_on_cpu(monkeypatch, ('triton', 'reference'))
    monkeypatch.setitem(sys.modules, 'triton',
                        types.SimpleNamespace(__version__='2.0.0'))
    q, k, v = leaf_qkv()
    messages = auto_warnings(q, k, v)
    assert len(messages) == 1 and 'Triton 2.0.0 is older than 2.1' in \
        messages[0]


def test_unsupported_head_dim_falls_back_with_one_warning(monkeypatch):
    pytest.importorskip('triton')
    cuda_order_on_cpu(monkeypatch, ('triton', 'reference'))
    q, k, v = leaf_qkv(head_dim=4)  # the kernels need a multiple of 8
    messages = auto_warnings(q, k, v)
    assert len(messages) == 1 and 'head_dim' in messages[0]


def test_flex_without_cpu_backward_falls_back_with_one_warning(monkeypatch):
    cuda_order_on_cpu(monkeypatch, ('flex', 'reference'))
    q, k, v = leaf_qkv()
    messages = auto_warnings(q, k, v)
    assert len(messages) == 1
    assert 'with flex: FlexAttention has no backward on the CPU' in \
        messages[0]


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
    triton_kernels = pytest.importorskip('acmix_mm.ops.triton_kernels')
    kernel = FailingKernel()
    autotuned_kernel = triton_kernels._autotuned_kernel
    monkeypatch.setattr(
        triton_kernels, '_autotuned_kernel', lambda launched, *variant: kernel
        if launched == name else autotuned_kernel(launched, *variant))
    monkeypatch.delenv(triton_kernels.TUNING_CONFIG_ENV, raising=False)
    return kernel


@pytest.mark.parametrize('part', ['forward', 'grad_key_value'])
@pytest.mark.parametrize('design', ['slot', 'region'])
def test_failing_kernel_falls_back_with_one_warning(monkeypatch, design, part):
    cuda_order_on_cpu(monkeypatch)
    triton_kernels = pytest.importorskip('acmix_mm.ops.triton_kernels')
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, design)
    kernels = triton_kernels.KERNEL_DESIGNS[design]
    name = getattr(kernels, part)
    if part == 'grad_key_value' and kernels.edge_grad_key_value:
        # The small test maps have edge key tiles only.
        name = kernels.edge_grad_key_value
    kernel = break_kernel(monkeypatch, name)
    q, k, v = leaf_qkv()
    messages = auto_warnings(q, k, v)
    assert kernel.calls == 1  # the failed variant is not tried again
    assert len(messages) == 1 and RUN_TIME_FALLBACK in messages[0]
    assert f'{name} kernel failed to compile or launch' in messages[0]


def test_layer_with_auto_trains_through_a_failing_kernel(monkeypatch):
    cuda_order_on_cpu(monkeypatch)
    break_kernel(monkeypatch, chosen_kernel('forward', 8, 1))
    reference = randomize_(
        ACmix(8, 16, kernel_att=5, head=2, attn_impl='reference'))
    auto = ACmix(8, 16, kernel_att=5, head=2, attn_impl='auto')
    auto.load_state_dict(reference.state_dict())
    images = torch.randn(2, 8, 7, 9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        outs = [layer(images) for layer in (auto, reference)]
        grads = [
            torch.autograd.grad(out.square().sum(), layer.parameters())
            for out, layer in zip(outs, (auto, reference))
        ]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert sum(RUN_TIME_FALLBACK in str(w.message) for w in caught) == 1


def test_reference_never_warns(monkeypatch):
    break_kernel(monkeypatch, 'forward')
    q, k, v = leaf_qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert_matches_reference(q, k, v, 'reference')
    assert not caught


# ------------------------------------------------------ named backends


def test_named_backend_that_cannot_run_raises_with_the_reason(monkeypatch):
    q, k, v = leaf_qkv(head_dim=4)
    with pytest.raises(
            RuntimeError,
            match="'flex' cannot run "
            'local_attention here: FlexAttention has no backward'):
        local_attention(q, k, v, 3, attn_impl='flex')
    monkeypatch.setitem(sys.modules, 'triton', None)
    with pytest.raises(
            RuntimeError,
            match="'triton' cannot run "
            'local_attention here: Triton is not installed'):
        local_attention(q, k, v, 3, attn_impl='triton')


def test_named_triton_raises_for_unsupported_head_dim():
    pytest.importorskip('triton')
    q, k, v = leaf_qkv(head_dim=4)
    with pytest.raises(RuntimeError, match="'triton' cannot run.*head_dim"):
        local_attention(q, k, v, 3, attn_impl='triton')


def chosen_kernel(part, head_dim, stride):
    """The kernel the op runs for ``part`` (a KernelSet field)."""
    triton_kernels = pytest.importorskip('acmix_mm.ops.triton_kernels')
    design = triton_kernels.kernel_design(head_dim, stride)
    return getattr(triton_kernels.KERNEL_DESIGNS[design], part)


def test_named_triton_raises_when_a_kernel_fails(monkeypatch):
    q, k, v = leaf_qkv()
    name = chosen_kernel('grad_query', q.shape[2], 1)
    break_kernel(monkeypatch, name)
    with pytest.raises(RuntimeError, match=f' {name} kernel failed'):
        outputs_and_grads(
            lambda *args: local_attention(*args, attn_impl='triton'), q, k, v)


def test_fused_names_its_replacements():
    q, k, v = leaf_qkv()
    with pytest.raises(
            ValueError,
            match="'fused' was replaced by.*'triton'"
            ".*'flex'.*'sdpa'"):
        local_attention(q, k, v, 3, attn_impl='fused')
    with pytest.raises(ValueError, match="'fused' was replaced"):
        ACmix(8, 16, attn_impl='fused')


@pytest.mark.parametrize('op,attn_impl', [(LOCAL_ATTENTION, 'sdpa'),
                                          (WINDOW_ATTENTION, 'triton'),
                                          (WINDOW_ATTENTION, 'flex')])
def test_backend_of_another_op_names_the_right_ones(op, attn_impl):
    with pytest.raises(ValueError) as error:
        choose_backend(op, attn_impl, 'cpu', torch.float32, 8)
    assert f'{attn_impl!r} does not implement {op}' in str(error.value)
    assert str(BACKENDS[op]) in str(error.value)


def test_unknown_attn_impl_lists_the_values():
    with pytest.raises(
            ValueError,
            match="must be one of \\('auto', "
            "'reference', 'triton', 'flex', 'sdpa'\\)"):
        choose_backend(LOCAL_ATTENTION, 'fast', 'cpu', torch.float32, 8)


def test_window_attention_backends_match():
    q, k, v = torch.randn(3, 4, 2, 16, 8).unbind(0)
    bias = torch.randn(2, 2, 16, 16)
    expected = window_attention_reference(q, k, v, bias, 0.3)
    for attn_impl in ('auto', 'sdpa', 'reference'):
        torch.testing.assert_close(
            window_attention(q, k, v, bias, 0.3, attn_impl=attn_impl),
            expected,
            atol=1e-5,
            rtol=1e-5)
