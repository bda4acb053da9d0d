"""The Triton kernels count reflected keys as acmix_mm.ops.reflection says.

With q = 0 every logit is equal, so each output is the mean of v over the
window counted with multiplicity; with v one-hot per pixel (channel
y * W + x is 1 at pixel (y, x)), output channel y * W + x reads how many
window offsets land on (y, x) after reflection, divided by the window size.
Runs the public Triton backend (in the interpreter without a GPU)."""
import math

import pytest
import torch

from acmix_mm.ops.reflection import reflection_multiplicity

triton_backend = pytest.importorskip('acmix_mm.ops.triton')


def expected_counts(height, width, kernel_size, stride):
    """(H * W, ceil(H / s), ceil(W / s)) multiplicity of each key pixel in
    the window of each query, from the reflection rule."""
    rows = torch.arange(0, height, stride)[:, None]
    cols = torch.arange(0, width, stride)[None, :]
    counts = torch.stack([
        reflection_multiplicity(rows, torch.tensor(y), height, kernel_size) *
        reflection_multiplicity(cols, torch.tensor(x), width, kernel_size)
        for y in range(height) for x in range(width)
    ])
    return counts.float()


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('height,width,kernel_size', [(2, 2, 5), (3, 5, 7),
                                                      (1, 4, 3), (6, 7, 3),
                                                      (4, 3, 7)])
def test_triton_kernels_count_reflections_like_the_rule(
        height, width, kernel_size, stride):
    pixels = height * width
    head_dim = 8 * math.ceil(pixels / 8)
    if triton_backend.local_attention_unavailable_reason(
            *torch.zeros(3, 1, 1, head_dim, height, width), kernel_size,
            stride) is not None:
        pytest.skip('the Triton kernels cannot run here')
    v = torch.zeros(1, 1, head_dim, height, width)
    v[0, 0, :pixels] = torch.eye(pixels).view(pixels, height, width)
    q = torch.zeros_like(v)
    out = triton_backend.local_attention(q, torch.randn_like(v), v,
                                         kernel_size, stride)
    counts = out[0, 0, :pixels] * kernel_size**2
    torch.testing.assert_close(
        counts,
        expected_counts(height, width, kernel_size, stride),
        atol=1e-4,
        rtol=0)
    assert (out[0, 0, pixels:] == 0).all()
