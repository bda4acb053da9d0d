"""Fused (Triton) local attention against the PyTorch reference.

On machines without CUDA the kernels run in Triton's interpreter, which must
be enabled before the kernels are imported; there the shapes stay small.
"""
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

triton = pytest.importorskip('triton')

from acmix_mm.ops import triton_kernels  # noqa: E402
from acmix_mm.ops.reference import local_attention_reference  # noqa: E402
from acmix_mm.ops.triton import local_attention  # noqa: E402

ON_CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if ON_CUDA else 'cpu'
SCALE = 0.37
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
cuda_only = pytest.mark.skipif(not ON_CUDA, reason='needs a CUDA GPU')

if not ON_CUDA and not triton_kernels.interpreter_active():
    pytest.fail(
        'acmix_mm.ops.triton_kernels was imported before '
        'TRITON_INTERPRET=1 was set; set it before importing acmix_mm '
        '(e.g. in conftest.py) to run these tests without a GPU',
        pytrace=False)

# (batch, heads, head_dim, height, width, kernel_size, stride)
SHAPES = [
    (2, 2, 16, 5, 7, 3, 1),
    (2, 1, 24, 9, 6, 5, 1),
    (2, 1, 8, 13, 11, 7, 1),
    (2, 2, 8, 10, 17, 3, 1),
    (2, 2, 16, 5, 7, 7, 2),
    (2, 1, 8, 9, 6, 3, 2),
    (2, 1, 24, 13, 11, 5, 2),
    (2, 1, 64, 11, 9, 7, 2),
    (2, 1, 128, 6, 5, 3, 1),
    (2, 3, 16, 8, 8, 5, 1),
    (2, 2, 8, 16, 12, 3, 2),
    # Tiles whose windows stay inside the map (no reflection) as well.
    (1, 1, 8, 24, 20, 3, 1),
    (1, 2, 16, 24, 22, 7, 2),
    # Interior slot dK/dV tiles, edge tiles on all four sides.
    (1, 1, 16, 22, 33, 7, 1),
]
TINY_MAPS = [(1, 1), (1, 4), (2, 2), (3, 3), (4, 4), (2, 1)]
HALF_SHAPES = [
    (2, 2, 16, 5, 7, 3, 1),
    (2, 1, 24, 9, 6, 5, 2),
    (2, 1, 8, 3, 3, 7, 1),
    (2, 1, 64, 13, 11, 7, 2),
    (1, 1, 128, 10, 9, 7, 1),
    (1, 1, 16, 22, 33, 7, 1),
]
LARGE_SHAPES = [
    # ACmix-ResNet-50 stage 1 at COCO 800x1333 (batch 2) and ImageNet 224
    # (batch 64).
    (2, 4, 16, 200, 334, 7, 1),
    (64, 4, 16, 56, 56, 7, 1),
    (2, 4, 32, 56, 56, 7, 1),
    (2, 4, 64, 33, 47, 5, 1),
    (2, 2, 128, 28, 28, 3, 1),
    (2, 4, 24, 57, 43, 7, 2),
    (2, 2, 64, 56, 56, 3, 2),
    (2, 2, 128, 31, 29, 5, 2),
]


def random_qkv(batch, heads, head_dim, height, width, dtype=torch.float32):
    """q, k, v (B, heads, D, H, W) on DEVICE, leaf tensors with grads."""
    values = torch.randn(3, batch, heads, head_dim, height, width)
    return [t.to(DEVICE, dtype).requires_grad_() for t in values.unbind(0)]


def reference_and_grads(q, k, v, kernel_size, stride, grad_out):
    """float64 reference output and (dq, dk, dv) at the values of q, k, v."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = local_attention_reference(*leaves, kernel_size, stride, SCALE)
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return out, grads


def assert_close(actual, expected, dtype, name):
    """Elementwise atol + rtol * |expected|, atol scaled by the tensor's
    largest magnitude: the errors of sums over many rounded products (e.g.
    dQ with head_dim 128) grow with the values summed, in every dtype."""
    tolerance = dict(TOLERANCES[dtype])
    tolerance['atol'] *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.double(), expected, **tolerance, msg=lambda m: f'{name}: {m}')


def check_against_reference(q, k, v, kernel_size, stride, grad_out=None):
    """Fused output and q/k/v gradients match the float64 reference."""
    out = local_attention(q, k, v, kernel_size, stride, SCALE)
    height, width = q.shape[-2:]
    expected_shape = (*q.shape[:3], math.ceil(height / stride),
                      math.ceil(width / stride))
    assert out.shape == expected_shape and out.dtype == v.dtype
    if grad_out is None:
        grad_out = torch.randn(out.shape).to(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected_out, expected_grads = reference_and_grads(q, k, v, kernel_size,
                                                       stride, grad_out)
    assert_close(out, expected_out, q.dtype, 'out')
    for name, grad, expected in zip('qkv', grads, expected_grads):
        assert_close(grad, expected, q.dtype, f'grad {name}')


@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_float32_matches_reference(shape):
    torch.manual_seed(1)
    batch, heads, head_dim, height, width, kernel_size, stride = shape
    q, k, v = random_qkv(batch, heads, head_dim, height, width)
    check_against_reference(q, k, v, kernel_size, stride)


@pytest.mark.parametrize('height,width', TINY_MAPS)
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel_size', [3, 5, 7])
def test_tiny_maps_count_repeated_reflections(height, width, kernel_size,
                                              stride):
    torch.manual_seed(2)
    q, k, v = random_qkv(2, 1, 8, height, width)
    check_against_reference(q, k, v, kernel_size, stride)


@pytest.mark.parametrize('shape', HALF_SHAPES, ids=str)
def test_float16_matches_reference(shape):
    torch.manual_seed(3)
    batch, heads, head_dim, height, width, kernel_size, stride = shape
    q, k, v = random_qkv(batch, heads, head_dim, height, width, torch.float16)
    check_against_reference(q, k, v, kernel_size, stride)


@cuda_only
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('shape', SHAPES + HALF_SHAPES, ids=str)
def test_half_precision_matches_reference_on_cuda(shape, dtype):
    torch.manual_seed(4)
    batch, heads, head_dim, height, width, kernel_size, stride = shape
    q, k, v = random_qkv(batch, heads, head_dim, height, width, dtype)
    check_against_reference(q, k, v, kernel_size, stride)


@cuda_only
@pytest.mark.parametrize('dtype',
                         [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', LARGE_SHAPES, ids=str)
def test_large_maps_match_reference_on_cuda(shape, dtype):
    torch.manual_seed(5)
    batch, heads, head_dim, height, width, kernel_size, stride = shape
    q, k, v = random_qkv(batch, heads, head_dim, height, width, dtype)
    check_against_reference(q, k, v, kernel_size, stride)


def shared_tuning_configs():
    """(design, head_dim, config): each config that all kernels of a design
    autotune over at head_dim."""
    cases = []
    for design, head_dim in (('slot', 16), ('slot', 32), ('region', 32)):
        configs = [
            set(triton_kernels.KERNELS[name].tuning_configs(head_dim))
            for name in triton_kernels.KERNEL_DESIGNS[design].names()
        ]
        cases += [(design, head_dim, config)
                  for config in sorted(set.intersection(*configs))]
    return cases


@cuda_only
@pytest.mark.parametrize(
    'design,head_dim,config', shared_tuning_configs(), ids=str)
def test_every_tuning_config_matches_reference(monkeypatch, design, head_dim,
                                               config):
    """Each (num_warps, num_stages) the autotuners may pick, run explicitly
    (the other tests may pin one with ACMIX_TUNING_CONFIG)."""
    if config not in triton_kernels.tuning_configs(torch.device(DEVICE)):
        pytest.skip(f'Triton {triton.__version__} cannot compile {config} '
                    'for this GPU')
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, design)
    torch.manual_seed(13)
    q, k, v = [
        t.detach() for t in random_qkv(2, 2, head_dim, 23, 29, torch.bfloat16)
    ]
    out, lse = triton_kernels.local_attention_forward(
        q, k, v, 7, 1, SCALE, config=config)
    grad_out = torch.randn(out.shape).to(out)
    grads = triton_kernels.local_attention_backward(
        grad_out, q, k, v, out, lse, 7, 1, SCALE, config=config)
    last = triton_kernels.last_tuning_configs()
    assert {
        last[name]
        for name in triton_kernels.KERNEL_DESIGNS[design].names()
    } == {config}
    expected_out, expected_grads = reference_and_grads(q, k, v, 7, 1, grad_out)
    assert_close(out, expected_out, torch.bfloat16, 'out')
    for name, grad, expected in zip('qkv', grads, expected_grads):
        assert_close(grad, expected, torch.bfloat16, f'grad {name}')


def other_kernel_design(head_dim, stride):
    """The kernel design kernel_design does not choose."""
    chosen = triton_kernels.kernel_design(head_dim, stride)
    return next(name for name in triton_kernels.KERNEL_DESIGNS
                if name != chosen)


@pytest.mark.parametrize(
    'shape',
    SHAPES + [(2, 1, 8, 3, 2, 7, 1), (1, 1, 16, 1, 4, 5, 2),
              (1, 1, 8, 21, 30, 7, 1), (1, 1, 16, 24, 56, 7, 2)],
    ids=str)
def test_each_kernel_design_matches_reference(monkeypatch, shape):
    """The kernels of the design not chosen for the shape (the other tests
    run the chosen one): each kernel of each design meets every shape."""
    torch.manual_seed(14)
    batch, heads, head_dim, height, width, kernel_size, stride = shape
    design = other_kernel_design(head_dim, stride)
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, design)
    monkeypatch.setattr(triton_kernels, '_LAST_CONFIGS', {})
    q, k, v = random_qkv(batch, heads, head_dim, height, width)
    check_against_reference(q, k, v, kernel_size, stride)
    assert set(triton_kernels.last_tuning_configs()) == launched_kernels(
        design, shape)


@pytest.mark.parametrize('kernel_size,stride,head_dim',
                         [(7, 1, 16), (5, 2, 64), (3, 1, 32)])
def test_interior_key_tiles_need_no_masks_or_reflection(
        kernel_size, stride, head_dim):
    """KeyTiles' interior rectangle is exactly the tiles whose keys are
    more than pad from every edge and whose loaded queries are on the
    map."""
    pad = kernel_size // 2
    tiling = triton_kernels.slot_key_tiling(kernel_size, stride, head_dim,
                                            torch.float16)
    extent = tiling.tile_h * tiling.tiles
    query_rows = (extent - 1 + pad) // stride + pad // stride + 1

    def interior(first, size, tile, queries):
        out_size = -(-size // stride)
        first_query = first // stride - pad // stride
        return (first > pad and first + tile - 1 < size - 1 - pad
                and first_query >= 0 and first_query + queries - 1 < out_size)

    for height, width in [(200, 334), (23, 29), (21, 30), (9, 11), (40, 3)]:
        tiles = triton_kernels.key_tiles(tiling, kernel_size, stride, height,
                                         width)
        expected = {
            (col, row)
            for col in range(tiles.cols)
            for row in range(tiles.rows)
            if interior(col *
                        tiling.tile_w, width, tiling.tile_w, tiling.chunk_w)
            and interior(row * extent, height, extent, query_rows)
        }
        found = {(tiles.first_col + col, tiles.first_row + row)
                 for col in range(tiles.inner_cols)
                 for row in range(tiles.inner_rows)}
        assert found == expected, (height, width)
        assert tiles.edges == tiles.cols * tiles.rows - len(expected)


def launched_kernels(design, shape):
    """The kernels of ``design`` that run at ``shape``: all but the slot
    dK/dV of interior key tiles on maps without any."""
    kernels = triton_kernels.KERNEL_DESIGNS[design]
    names = set(kernels.names())
    if kernels.edge_grad_key_value:
        _, _, head_dim, height, width, kernel_size, stride = shape
        tiling = triton_kernels.slot_key_tiling(kernel_size, stride, head_dim,
                                                torch.float32)
        tiles = triton_kernels.key_tiles(tiling, kernel_size, stride, height,
                                         width)
        if not tiles.inner_cols:
            names.remove(kernels.grad_key_value)
    return names


@pytest.mark.parametrize('design', ['slot', 'region'])
@pytest.mark.parametrize('scale', [-0.6, 0.0])
def test_scale_of_any_sign(monkeypatch, design, scale):
    """Non-positive scales: the slot kernels mask and take maxima before
    scaling, so they sign an operand and exponentiate by |scale|."""
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, design)
    torch.manual_seed(16)
    q, k, v = random_qkv(2, 1, 16, 9, 11)
    out = local_attention(q, k, v, 5, 1, scale)
    grad_out = torch.randn(out.shape).to(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected_out = local_attention_reference(*leaves, 5, 1, scale)
    expected_grads = torch.autograd.grad(expected_out, leaves,
                                         grad_out.double())
    assert_close(out, expected_out, torch.float32, 'out')
    for name, grad, expected in zip('qkv', grads, expected_grads):
        assert_close(grad, expected, torch.float32, f'grad {name}')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('head_dim,stride,contiguous', [(16, 1, 'qkv'),
                                                        (8, 1, 'k'),
                                                        (32, 2, 'kv')])
def test_head_contiguous_maps_load_vectors(head_dim, stride, contiguous,
                                           dtype):
    """The maps named in ``contiguous`` with channel stride 1 (as the
    layers' keys), the others channel-major: the slot kernels load the rows
    of their loops (KernelSpec.vector_inputs) as vectors whatever the
    layout, also with a head_dim below its block."""
    torch.manual_seed(15)
    batch, heads, height, width = 2, 2, 9, 19
    base = torch.randn(batch, height, width, 3, heads, head_dim)
    q, k, v = [(t if name in contiguous else t.contiguous()).to(
        DEVICE, dtype).requires_grad_()
               for name, t in zip('qkv',
                                  base.permute(3, 0, 4, 5, 1, 2).unbind(0))]
    vector = 16 // q.element_size()
    assert [triton_kernels._vector_width(t) for t in (q, k, v)
            ] == [vector if name in contiguous else 1 for name in 'qkv']
    launched = {}
    launch = triton_kernels._launch

    def recording_meta(name, *args, **meta):
        launched[name] = meta
        return launch(name, *args, **meta)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(triton_kernels.KERNEL_DESIGN_ENV, 'slot')
        patch.setattr(triton_kernels, '_launch', recording_meta)
        check_against_reference(q, k, v, 7, stride)
    for name, meta in launched.items():
        for tensor in triton_kernels.KERNELS[name].vector_inputs:
            assert meta[f'{tensor.upper()}_VECTOR'] == vector, (name, tensor)
    if stride == 1:  # 9 x 19 maps: edge key tiles only
        assert set(launched) == {
            'slot_forward', 'slot_grad_query', 'slot_grad_key_value_edge'
        }


def test_triton_2_runs_the_region_design(monkeypatch):
    """Triton 2.1 takes tens of minutes to compile the slot kernels; they
    run from Triton 3.3."""
    monkeypatch.setattr(triton_kernels, '_TRITON_VERSION', (2, 1))
    assert triton_kernels.kernel_design(16, 1) == 'region'
    assert set(triton_kernels.available_kernels()) == set(
        triton_kernels.KERNEL_DESIGNS['region'].names())
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, 'slot')
    with pytest.raises(ValueError, match='slot: Triton >= 3.3'):
        triton_kernels.kernel_design(16, 1)


def test_unknown_kernel_design_is_named(monkeypatch):
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, 'fastest')
    with pytest.raises(ValueError, match="ACMIX_KERNEL_DESIGN.*'fastest'"):
        triton_kernels.kernel_design(16, 1)


@pytest.mark.parametrize('stride', [1, 2])
def test_split_views_of_one_projection(stride):
    """q, k, v as strided views of a (B, 3 * heads, D, H, W) conv output."""
    torch.manual_seed(6)
    heads, head_dim, height, width = 2, 16, 9, 7
    qkv = torch.randn(2, 3 * heads, head_dim, height, width).to(DEVICE)
    qkv.requires_grad_()
    q, k, v = qkv.split(heads, dim=1)
    assert not q.is_contiguous()
    out = local_attention(q, k, v, 5, stride, SCALE)
    grad_out = torch.randn(out.shape).to(out)
    out.backward(grad_out)
    expected_out, expected_grads = reference_and_grads(q, k, v, 5, stride,
                                                       grad_out)
    assert_close(out, expected_out, torch.float32, 'out')
    assert_close(qkv.grad, torch.cat(expected_grads, dim=1), torch.float32,
                 'grad qkv')


@pytest.mark.parametrize('kernel_size,stride', [(3, 1), (7, 2)])
def test_channels_last_layout_and_strided_grad_out(kernel_size, stride):
    """Permuted inputs (pixel stride != 1) and a transposed grad_out."""
    torch.manual_seed(7)
    batch, heads, head_dim, height, width = 2, 2, 8, 7, 10
    base = torch.randn(3, batch, height, width, heads, head_dim).to(DEVICE)
    q, k, v = [
        t.requires_grad_() for t in base.permute(0, 1, 4, 5, 2, 3).unbind(0)
    ]
    assert q.stride(-1) == heads * head_dim
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    grad_out = torch.randn(batch, heads, head_dim, out_w, out_h).to(DEVICE)
    check_against_reference(q, k, v, kernel_size, stride,
                            grad_out.transpose(-1, -2))


def test_broadcast_grad_out_of_a_sum():
    """out.sum() hands the backward an expanded (stride 0) gradient."""
    torch.manual_seed(8)
    q, k, v = random_qkv(2, 1, 8, 6, 5)
    local_attention(q, k, v, 3, 2, SCALE).sum().backward()
    grad_out = torch.ones(2, 1, 8, 3, 3, device=DEVICE)
    _, expected_grads = reference_and_grads(q, k, v, 3, 2, grad_out)
    for name, leaf, expected in zip('qkv', (q, k, v), expected_grads):
        assert_close(leaf.grad, expected, torch.float32, f'grad {name}')


@pytest.mark.parametrize('design', ['slot', 'region'])
def test_backward_is_deterministic(monkeypatch, design):
    monkeypatch.setenv(triton_kernels.KERNEL_DESIGN_ENV, design)
    torch.manual_seed(9)
    q, k, v = random_qkv(2, 1, 16, 11, 9)
    out = local_attention(q, k, v, 7, 1, SCALE)
    grad_out = torch.randn(out.shape).to(out)
    first = torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v), grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@cuda_only
def test_new_map_sizes_reuse_compiled_kernels():
    """Sizes and size-dependent strides are not specialised: after the
    first size (and its autotuning), other sizes compile nothing new."""
    kernels = [spec.kernel for spec in triton_kernels.KERNELS.values()]
    if not all(hasattr(kernel, 'device_caches') for kernel in kernels):
        pytest.skip('this Triton keeps no per-device kernel caches')

    def compiled_variants():
        """Kernels compiled so far, over all devices."""
        return sum(
            len(cache[0]) for kernel in kernels
            for cache in kernel.device_caches.values())

    counts = []
    for height, width in [(33, 47), (35, 41), (64, 48), (17, 90)]:
        torch.manual_seed(12)
        q, k, v = random_qkv(2, 2, 32, height, width, torch.float16)
        local_attention(q, k, v, 7, 1, SCALE).sum().backward()
        counts.append(compiled_variants())
    assert counts[1:] == counts[:1] * 3


@pytest.mark.parametrize('wanted', ['q', 'v'])
def test_only_requested_gradients(wanted):
    torch.manual_seed(10)
    q, k, v = random_qkv(2, 1, 8, 5, 6)
    inputs = dict(q=q, k=k, v=v)
    for name, tensor in inputs.items():
        tensor.requires_grad_(name == wanted)
    out = local_attention(q, k, v, 3, 1, SCALE)
    grad_out = torch.randn(out.shape).to(out)
    out.backward(grad_out)
    _, expected_grads = reference_and_grads(q, k, v, 3, 1, grad_out)
    for name, expected in zip('qkv', expected_grads):
        if name == wanted:
            assert_close(inputs[name].grad, expected, torch.float32, name)
        else:
            assert inputs[name].grad is None


def test_forward_without_grad():
    torch.manual_seed(11)
    q, k, v = [t.detach() for t in random_qkv(2, 2, 16, 5, 5)]
    with torch.no_grad():
        out = local_attention(q, k, v, 5, 1, SCALE)
    expected = local_attention_reference(q.double(), k.double(), v.double(), 5,
                                         1, SCALE)
    assert not out.requires_grad
    assert_close(out, expected, torch.float32, 'out')


def _qkv(shape=(1, 1, 8, 4, 4), dtype=torch.float32):
    """Valid q, k, v unless told otherwise."""
    return [torch.randn(shape, dtype=dtype, device=DEVICE) for _ in range(3)]


def _with(index, tensor):
    """Valid q, k, v with the one at ``index`` replaced."""
    tensors = _qkv()
    tensors[index] = tensor
    return tensors


BAD_INPUTS = [
    ('ndim', lambda: (*_qkv((1, 8, 4, 4)), 3, 1), 'must be 5-D'),
    ('shape', lambda:
     (*_with(1, torch.randn(1, 1, 8, 4, 5, device=DEVICE)), 3, 1),
     'same shape'),
    ('dtype', lambda:
     (*_with(2, torch.randn(1, 1, 8, 4, 4, device=DEVICE, dtype=torch.float16)
             ), 3, 1), 'same dtype'),
    ('device', lambda:
     (*_with(0, torch.randn(1, 1, 8, 4, 4, device='meta')), 3, 1),
     'same device'),
    ('float64', lambda: (*_qkv(dtype=torch.float64), 3, 1), 'not supported'),
    ('head_dim', lambda: (*_qkv((1, 1, 12, 4, 4)), 3, 1), 'head_dim'),
    ('head_dim_large', lambda: (*_qkv((1, 1, 136, 4, 4)), 3, 1), 'head_dim'),
    ('even_kernel', lambda: (*_qkv(), 4, 1), 'odd'),
    ('large_kernel', lambda: (*_qkv(), 9, 1), 'kernel_size must be one of'),
    ('stride', lambda: (*_qkv(), 3, 3), 'stride must be one of'),
]


@pytest.mark.parametrize(
    'args,message', [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise(args, message):
    with pytest.raises(ValueError, match=message):
        local_attention(*args())


@pytest.mark.skipif(ON_CUDA, reason='only the interpreter lacks bfloat16')
def test_bfloat16_rejected_by_interpreter():
    with pytest.raises(ValueError, match='interpreter'):
        local_attention(*_qkv(dtype=torch.bfloat16), 3)


@cuda_only
def test_cpu_tensors_rejected_without_interpreter():
    cpu = [torch.randn(1, 1, 8, 4, 4) for _ in range(3)]
    with pytest.raises(ValueError, match='CUDA tensors'):
        local_attention(*cpu, 3)


@pytest.mark.parametrize('version,capability,expected_warps', [
    ((2, 1), (9, 0), {1, 2, 4, 8}),
    ((2, 2), (9, 0), {1, 2, 4}),
    ((3, 1), (9, 0), {1, 2, 4}),
    ((3, 1), (8, 0), {1, 2, 4, 8}),
    ((3, 2), (9, 0), {1, 2, 4, 8}),
])
def test_tuning_configs_avoid_compiler_aborts(monkeypatch, version, capability,
                                              expected_warps):
    """Triton 2.2 to 3.1 abort on some 8-warp kernels for Hopper: neither
    the autotuner nor a pinned config may try them there."""
    monkeypatch.setattr(triton_kernels, '_TRITON_VERSION', version)
    monkeypatch.setattr(
        torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    configs = triton_kernels.tuning_configs(torch.device('cuda', 0))
    assert {warps for warps, _ in configs} == expected_warps
    candidates = [
        triton.Config({}, num_warps=w, num_stages=s)
        for w, s in triton_kernels.TUNING_CONFIGS
    ]
    pruned = triton_kernels._compilable(candidates, {})
    assert [(c.num_warps, c.num_stages) for c in pruned] == list(configs)
    assert triton_kernels.tuning_configs(torch.device('cpu')) == \
        triton_kernels.TUNING_CONFIGS


def test_kernels_tuned_over_8_warps_only_fall_back_to_4(monkeypatch):
    """A kernel whose tuning configs all have 8 warps (those with fewer
    spill) still launches where Triton cannot compile 8 warps."""
    monkeypatch.setattr(triton_kernels, '_TRITON_VERSION', (3, 0))
    monkeypatch.setattr(
        torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    eight_warps = triton_kernels.KERNELS['grad_key_value'].tuning_configs(128)
    assert {warps for warps, _ in eight_warps} == {8}
    candidates = [
        triton.Config({}, num_warps=w, num_stages=s) for w, s in eight_warps
    ]
    pruned = triton_kernels._compilable(candidates, {})
    assert [(c.num_warps, c.num_stages)
            for c in pruned] == [(4, s) for _, s in eight_warps]
