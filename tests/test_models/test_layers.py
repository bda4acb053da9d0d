import math

import pytest
import torch
from acmix_reference import RefACmix, RefWindowACmix, randomize_, shift_mask

from acmix_mm.models.layers import ACmix, ShiftWindowACmix
from acmix_mm.ops import CONV_PATHS


@pytest.fixture(params=CONV_PATHS)
def conv_path(request):
    """Every form of the convolution path."""
    return request.param


def make_pair(in_planes=8,
              out_planes=16,
              kernel_att=7,
              head=4,
              kernel_conv=3,
              stride=1,
              seed=0,
              **layer_kwargs):
    ref = randomize_(
        RefACmix(in_planes, out_planes, kernel_att, head, kernel_conv, stride),
        seed)
    layer = ACmix(in_planes, out_planes, kernel_att, head, kernel_conv, stride,
                  **layer_kwargs)
    layer.load_state_dict(ref.state_dict(), strict=True)
    return ref, layer


def test_state_dict_has_reference_keys():
    ref = RefACmix(8, 16)
    layer = ACmix(8, 16)
    assert list(layer.state_dict()) == list(ref.state_dict())
    assert 'dep_conv.bias' not in layer.state_dict()
    for key, value in ref.state_dict().items():
        assert layer.state_dict()[key].shape == value.shape


def test_initialisation_is_shift_kernels_and_half_rates():
    layer = ACmix(8, 16, kernel_conv=3)
    layer.init_weights()
    assert layer.rate1.item() == 0.5 and layer.rate2.item() == 0.5
    weight = layer.dep_conv.weight
    for tap in range(9):
        expected = torch.zeros(3, 3)
        expected[tap // 3, tap % 3] = 1
        assert torch.equal(weight[:, tap], expected.expand(16, 3, 3))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('h,w', [(8, 8), (14, 10), (16, 12)])
def test_matches_reference_where_reference_code_works(stride, h, w, conv_path):
    ref, layer = make_pair(stride=stride, conv_path=conv_path)
    x = torch.randn(2, 8, h, w)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('h,w', [(1, 1), (1, 4), (2, 2), (3, 3), (4, 4),
                                 (3, 4), (2, 1), (5, 9), (11, 7)])
def test_tiny_and_odd_sizes(stride, h, w, conv_path):
    ref, layer = make_pair(stride=stride, seed=h * 10 + w, conv_path=conv_path)
    x = torch.randn(2, 8, h, w)
    out = layer(x)
    assert out.shape == (2, 16, math.ceil(h / stride), math.ceil(w / stride))
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('kernel_att,head,kernel_conv', [(3, 2, 3), (5, 1, 5),
                                                         (7, 8, 1)])
def test_other_kernel_and_head_settings(kernel_att, head, kernel_conv):
    ref, layer = make_pair(
        kernel_att=kernel_att, head=head, kernel_conv=kernel_conv, stride=2)
    x = torch.randn(1, 8, 9, 6)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_gradients_match_reference(stride, conv_path):
    ref, layer = make_pair(stride=stride, conv_path=conv_path)
    x = torch.randn(2, 8, 7, 6)
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    grad = torch.randn(2, 16, math.ceil(7 / stride), math.ceil(6 / stride))
    ref(x_ref).backward(grad)
    layer(x_ours).backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    ref_grads = dict(ref.named_parameters())
    for name, param in layer.named_parameters():
        torch.testing.assert_close(
            param.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize('stride', [1, 2])
def test_gradcheck_float64(stride, conv_path):
    layer = randomize_(
        ACmix(3, 4, kernel_att=3, head=2, stride=stride, conv_path=conv_path))
    layer = layer.double()
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x, ))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_runs_and_stays_close(dtype, conv_path):
    ref, layer = make_pair(conv_path=conv_path)
    x = torch.randn(2, 8, 9, 7)
    with torch.autocast('cpu', dtype=dtype):
        out = layer(x)
        out.float().sum().backward()
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref(x), atol=0.1, rtol=0.05)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_half_precision_module():
    _, layer = make_pair()
    x = torch.randn(1, 8, 5, 5)
    expected = layer(x)
    out = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def test_invalid_arguments_name_the_problem():
    with pytest.raises(ValueError, match='divisible by head'):
        ACmix(8, 10, head=4)
    with pytest.raises(ValueError, match='kernel_att'):
        ACmix(8, 16, kernel_att=4)
    with pytest.raises(ValueError, match='conv_path must be one of'):
        ACmix(8, 16, conv_path='fast')
    with pytest.raises(
            ValueError, match="'sdpa' does not implement "
            'local_attention'):
        ACmix(8, 16, attn_impl='sdpa')
    with pytest.raises(
            ValueError, match="'triton' does not implement "
            'window_attention'):
        ShiftWindowACmix(12, 3, 4, attn_impl='triton')


def make_window_pair(dim=12,
                     heads=3,
                     window=4,
                     shift=0,
                     seed=0,
                     **layer_kwargs):
    ref = randomize_(RefWindowACmix(dim, window, heads), seed)
    layer = ShiftWindowACmix(
        dim, heads, window, shift_size=shift, **layer_kwargs)
    missing, unexpected = layer.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and unexpected == ['relative_position_index']
    return ref, layer


@pytest.mark.parametrize('shift', [0, 2])
def test_window_acmix_matches_reference_on_window_multiples(shift, conv_path):
    ref, layer = make_window_pair(shift=shift, conv_path=conv_path)
    b, h, w, c = 2, 8, 12, 12
    x = torch.randn(b, h, w, c)
    shifted = torch.roll(x, (-shift, -shift), (1, 2)) if shift else x
    mask = shift_mask(h, w, 4, shift) if shift else None
    expected = ref(shifted, mask)
    if shift:
        expected = torch.roll(expected, (shift, shift), (1, 2))
    out = layer(x.view(b, h * w, c), (h, w))
    torch.testing.assert_close(
        out, expected.reshape(b, h * w, c), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('h,w', [(5, 11), (1, 1), (3, 9), (13, 4)])
def test_window_acmix_pads_and_crops(h, w, conv_path):
    ref, layer = make_window_pair(shift=2, conv_path=conv_path)
    x = torch.randn(2, h * w, 12)
    out = layer(x, (h, w))
    assert out.shape == x.shape
    # Equal to running the reference on the zero-padded map.
    ph, pw = -(-h // 4) * 4, -(-w // 4) * 4
    padded = torch.zeros(2, ph, pw, 12)
    padded[:, :h, :w] = x.view(2, h, w, 12)
    shift = 2 if min(h, w) > 4 else 0
    if shift:
        padded = torch.roll(padded, (-shift, -shift), (1, 2))
    expected = ref(padded, shift_mask(ph, pw, 4, shift) if shift else None)
    if shift:
        expected = torch.roll(expected, (shift, shift), (1, 2))
    torch.testing.assert_close(
        out, expected[:, :h, :w].reshape(2, h * w, 12), atol=1e-5, rtol=1e-5)


def test_window_acmix_gradcheck_float64(conv_path):
    layer = randomize_(
        ShiftWindowACmix(4, 2, 2, shift_size=1, conv_path=conv_path)).double()
    x = torch.randn(1, 3 * 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t, (3, 5)), (x, ))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_window_acmix_autocast(dtype, conv_path):
    _, layer = make_window_pair(shift=2, conv_path=conv_path)
    x = torch.randn(2, 9 * 10, 12)
    expected = layer(x, (9, 10))
    with torch.autocast('cpu', dtype=dtype):
        out = layer(x, (9, 10))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


def output_and_grads(layer, x, *args):
    """Layer output and the gradients of x and the parameters for a fixed
    weighting of the output."""
    x = x.clone().requires_grad_()
    out = layer(x, *args)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(),
                                [x, *layer.parameters()])
    return out, grads


@pytest.mark.parametrize('attn_impl', ['reference', 'triton'])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('h,w', [(3, 4), (9, 6)])
def test_every_cpu_backend_matches_reference_with_gradients(
        attn_impl, stride, h, w, conv_path):
    if attn_impl == 'triton':
        pytest.importorskip('triton')
    # head_dim 8: the Triton kernels' smallest.
    ref, layer = make_pair(
        out_planes=16,
        kernel_att=5,
        head=2,
        stride=stride,
        attn_impl=attn_impl,
        conv_path=conv_path)
    x = torch.randn(2, 8, h, w)
    x_ref = x.clone().requires_grad_()
    ref_out = ref(x_ref)
    ref_grads = torch.autograd.grad(
        (ref_out *
         torch.linspace(-1, 1, ref_out.numel()).view_as(ref_out)).sum(),
        [x_ref, *ref.parameters()])
    out, grads = output_and_grads(layer, x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, ref_grads):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('h,w', [(3, 4), (9, 6)])
def test_flex_layer_matches_reference_at_inference(stride, h, w, conv_path):
    pytest.importorskip('torch.nn.attention.flex_attention')
    ref, layer = make_pair(
        out_planes=16,
        kernel_att=5,
        head=2,
        stride=stride,
        attn_impl='flex',
        conv_path=conv_path)
    x = torch.randn(2, 8, h, w)
    with torch.no_grad():  # FlexAttention has no CPU backward
        torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('attn_impl', ['reference', 'sdpa'])
@pytest.mark.parametrize('h,w', [(8, 12), (5, 11)])
def test_every_window_backend_matches_with_gradients(attn_impl, h, w,
                                                     conv_path):
    _, reference = make_window_pair(
        shift=2, attn_impl='reference', conv_path='as_written')
    _, layer = make_window_pair(
        shift=2, attn_impl=attn_impl, conv_path=conv_path)
    x = torch.randn(2, h * w, 12)
    expected_out, expected_grads = output_and_grads(reference, x, (h, w))
    out, grads = output_and_grads(layer, x, (h, w))
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)
