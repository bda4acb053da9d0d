"""The Triton backend as the custom op ``torch.ops.acmix_mm.local_attention``:
opcheck, fake (meta) results, fallback to the reference when a kernel fails,
the availability predicate, and torch.compile with fullgraph=True.

Without CUDA the kernels run in Triton's interpreter (tests/conftest.py).
"""
import warnings

import pytest
import torch

pytest.importorskip('triton')

from acmix_mm.ops import triton as triton_backend  # noqa: E402
from acmix_mm.ops import triton_kernels  # noqa: E402
from acmix_mm.ops.reference import local_attention_reference  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
SCALE = 0.37
needs_custom_op = pytest.mark.skipif(
    not triton_backend.CUSTOM_OP_AVAILABLE,
    reason='torch.library.custom_op needs torch >= 2.4')
# (batch, heads, head_dim, height, width, kernel_size, stride)
OPCHECK_SHAPES = [
    (2, 1, 8, 6, 7, 3, 1),
    (1, 2, 16, 7, 6, 5, 2),
    (2, 1, 8, 2, 3, 7, 1),  # maps smaller than the window
    (1, 1, 8, 3, 2, 5, 2),
]


def random_qkv(batch, heads, head_dim, height, width, dtype=torch.float32):
    values = torch.randn(3, batch, heads, head_dim, height, width)
    return [t.to(DEVICE, dtype).requires_grad_() for t in values.unbind(0)]


def reference_and_grads(q, k, v, kernel_size, stride, grad_out):
    out = local_attention_reference(q, k, v, kernel_size, stride, SCALE)
    return out, torch.autograd.grad(out, (q, k, v), grad_out)


@pytest.fixture(autouse=True)
def no_failed_variants(monkeypatch):
    monkeypatch.setattr(triton_backend, '_FAILED_VARIANTS', {})
    monkeypatch.delenv(triton_kernels.TUNING_CONFIG_ENV, raising=False)


@needs_custom_op
def test_schema():
    schema = str(torch.ops.acmix_mm.local_attention.default._schema)
    assert schema == (
        'acmix_mm::local_attention(Tensor q, Tensor k, Tensor v, '
        'int kernel_size, int stride, float scale, bool fallback=False) '
        '-> (Tensor, Tensor)')


@needs_custom_op
@pytest.mark.parametrize('shape', OPCHECK_SHAPES, ids=str)
def test_opcheck(shape):
    """Schema, autograd registration, fake vs real results and AOT
    dispatch with dynamic shapes (forward and backward)."""
    *sizes, kernel_size, stride = shape
    q, k, v = random_qkv(*sizes)
    torch.library.opcheck(torch.ops.acmix_mm.local_attention.default,
                          (q, k, v, kernel_size, stride, SCALE))


@pytest.mark.parametrize('shape', [(2, 3, 16, 5, 7), (1, 1, 8, 1, 1)], ids=str)
@pytest.mark.parametrize('with_pe', [True, False], ids=['keys', 'values'])
def test_head_contiguous(shape, with_pe):
    """k - pe (keys) or v (values) laid out with channel stride 1, exactly,
    with the gradients of the channel-major slice of the projection (as in
    the layers) and of the broadcast pe."""
    batch, heads, head_dim, height, width = shape
    qkv = torch.randn(
        batch,
        head_dim,
        3,
        heads,
        height,
        width,
        device=DEVICE,
        requires_grad=True)
    x = qkv[:, :, 1].transpose(1, 2)
    pe = torch.randn(
        1, 1, head_dim, height, width, device=DEVICE, requires_grad=True)
    if with_pe:
        result, expected, leaves = triton_backend.head_contiguous(
            x, pe), x - pe, (qkv, pe)
    else:
        result, expected, leaves = triton_backend.head_contiguous(x), x, (
            qkv, )
    assert result.stride()[2:] == (1, width * head_dim, head_dim)
    torch.testing.assert_close(result, expected, rtol=0, atol=0)
    grad_result = torch.randn(result.shape, device=DEVICE)
    grads = torch.autograd.grad(result, leaves, grad_result)
    expected_grads = torch.autograd.grad(expected, leaves, grad_result)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)


@needs_custom_op
@pytest.mark.parametrize('with_pe', [True, False], ids=['keys', 'values'])
def test_head_contiguous_opcheck(with_pe):
    x = torch.randn(2, 2, 8, 4, 5, device=DEVICE, requires_grad=True)
    pe = torch.randn(1, 1, 8, 4, 5, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.acmix_mm.head_contiguous.default,
                          (x, pe if with_pe else None))


@needs_custom_op
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('height,width,stride', [(1, 1, 1), (5, 8, 2),
                                                 (200, 333, 2), (9, 4, 1)])
def test_fake_results_on_meta_tensors(height, width, stride, dtype):
    q, k, v = torch.randn(
        3, 2, 4, 16, height, width, dtype=dtype, device='meta').unbind(0)
    out, lse = torch.ops.acmix_mm.local_attention(q, k, v, 7, stride, SCALE)
    out_height, out_width = -(-height // stride), -(-width // stride)
    assert out.shape == (2, 4, 16, out_height, out_width)
    assert out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (8, out_height, out_width)
    assert lse.dtype == torch.float32 and lse.is_contiguous()
    grads = torch.ops.acmix_mm.local_attention_backward(
        out, q, k, v, out, lse, 7, stride, SCALE, True, False, False)
    assert grads[0].shape == q.shape and grads[0].is_contiguous()
    assert grads[1].numel() == grads[2].numel() == 0


def test_unavailable_reason():
    q, k, v = random_qkv(1, 1, 8, 5, 5)
    assert triton_backend.local_attention_unavailable_reason(q, k, v, 3,
                                                             1) is None
    assert 'kernel_size must be one of' in \
        triton_backend.local_attention_unavailable_reason(q, k, v, 9, 1)
    assert 'head_dim' in triton_backend.local_attention_unavailable_reason(
        *random_qkv(1, 1, 12, 5, 5), 3, 1)


@pytest.mark.parametrize('version', ['2.0.0', '1.13.1'])
def test_old_triton_is_unavailable(monkeypatch, version):
    import triton
    monkeypatch.setattr(triton, '__version__', version)
    triton_backend.triton_unavailable_reason.cache_clear()
    try:
        reason = triton_backend.triton_unavailable_reason()
        assert reason.startswith(f'Triton {version} is older than 2.1')
        assert triton_backend.local_attention_unavailable_reason(
            *random_qkv(1, 1, 8, 5, 5), 3, 1) == reason
    finally:
        triton_backend.triton_unavailable_reason.cache_clear()


class FailingLaunch:
    """Stands in for triton_kernels._launch: kernel ``name`` fails to
    compile (with ``cause`` in the error), the others run; counts the
    attempts of ``name``."""

    def __init__(self, name, cause):
        self.name, self.cause, self.attempts = name, cause, 0
        self.launch = triton_kernels._launch

    def __call__(self, name, q, grid, *args, **meta):
        if name != self.name:
            return self.launch(name, q, grid, *args, **meta)
        self.attempts += 1
        raise triton_kernels.KernelError(
            f'the fused {name} kernel failed to compile or launch: '
            f'{self.cause}', triton_kernels._variant(q, meta))


@pytest.mark.parametrize('kernel', ['forward', 'grad_query', 'grad_key_value'])
def test_failed_kernel_raises_without_fallback(monkeypatch, kernel):
    monkeypatch.setattr(triton_kernels, '_launch',
                        FailingLaunch(kernel, f'no fallback {kernel}'))
    q, k, v = random_qkv(1, 2, 8, 6, 7)
    with pytest.raises(
            triton_kernels.KernelError,
            match=f'fused {kernel} kernel.*no fallback {kernel}'):
        triton_backend.local_attention(q, k, v, 5, 2, SCALE).sum().backward()
    assert triton_backend.local_attention_unavailable_reason(q, k, v, 5,
                                                             2) is None


@pytest.mark.parametrize('kernel', ['forward', 'grad_query', 'grad_key_value'])
def test_failed_kernel_falls_back_to_reference(monkeypatch, kernel):
    """fallback=True: the reference computes the failed kernel's result
    (gradients recomputed), the variant is not tried again and the
    predicate reports it; one warning."""
    cause = f'simulated failure of {kernel}'
    failing = FailingLaunch(kernel, cause)
    monkeypatch.setattr(triton_kernels, '_launch', failing)
    q, k, v = random_qkv(1, 2, 8, 6, 7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3):
            out = triton_backend.local_attention(
                q, k, v, 5, 2, SCALE, fallback=True)
            grad_out = torch.randn(out.shape).to(out)
            grads = torch.autograd.grad(out, (q, k, v), grad_out)
            expected_out, expected_grads = reference_and_grads(
                q, k, v, 5, 2, grad_out)
            torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
            for grad, expected in zip(grads, expected_grads):
                torch.testing.assert_close(
                    grad, expected, atol=1e-4, rtol=1e-5)
    assert failing.attempts == 1
    messages = [str(w.message) for w in caught if cause in str(w.message)]
    assert len(messages) == 1
    assert 'falls back to the reference' in messages[0]
    assert cause in triton_backend.local_attention_unavailable_reason(
        q, k, v, 5, 2)


def attention_block(q, k, v, kernel_size, stride):
    """The op between elementwise ops that Inductor fuses."""
    out = triton_backend.local_attention(q * 1.5, k, v.sin(), kernel_size,
                                         stride, SCALE)
    return out.tanh() * 2


@pytest.mark.slow
@needs_custom_op
def test_compiled_fullgraph_matches_eager():
    """torch.compile(fullgraph=True, dynamic=True) traces through the op;
    new image sizes reuse the graph."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('inductor')
    compiled = torch.compile(
        attention_block, fullgraph=True, dynamic=True, backend=counter)
    frames = []  # compiled frames after each size
    # (height, width, kernel_size, stride); maps smaller than the window.
    for height, width, kernel_size, stride in [(6, 7, 5, 2), (9, 11, 5, 2),
                                               (4, 3, 5, 2)]:
        q, k, v = random_qkv(2, 2, 8, height, width)
        out = compiled(q, k, v, kernel_size, stride)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        expected = attention_block(q, k, v, kernel_size, stride)
        expected_grads = torch.autograd.grad(expected.square().sum(),
                                             (q, k, v))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(
                grad, expected_grad, atol=1e-5, rtol=1e-5)
        frames.append(counter.frame_count)
    assert frames == frames[:1] * len(frames)
