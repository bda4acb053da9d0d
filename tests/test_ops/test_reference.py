import math

import pytest
import torch
import torch.nn.functional as F
from acmix_reference import mirror

from acmix_mm.ops import local_attention_reference, reflect_index


@pytest.mark.parametrize('size', [1, 2, 3, 4, 7, 10])
@pytest.mark.parametrize('pad', [0, 1, 3, 5, 9])
def test_reflect_index_is_repeated_mirroring(size, pad):
    expected = [mirror(i, size) for i in range(-pad, size + pad)]
    assert reflect_index(size, pad).tolist() == expected


@pytest.mark.parametrize('size,pad', [(4, 3), (7, 3), (9, 2), (2, 1)])
def test_reflect_index_matches_reflection_pad_where_defined(size, pad):
    x = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    padded = F.pad(x, (pad, pad), mode='reflect')[0, 0]
    assert padded.long().tolist() == reflect_index(size, pad).tolist()


def brute_force_attention(q, k, v, kernel, stride, scale):
    """One query at a time, straight from the definition."""
    b, n, d, h, w = q.shape
    out = torch.zeros(
        b, n, d, math.ceil(h / stride), math.ceil(w / stride), dtype=q.dtype)
    half = kernel // 2
    for i in range(out.shape[3]):
        for j in range(out.shape[4]):
            keys, values = [], []
            for a in range(-half, half + 1):
                for c in range(-half, half + 1):
                    y, x = mirror(stride * i + a, h), mirror(stride * j + c, w)
                    keys.append(k[..., y, x])
                    values.append(v[..., y, x])
            keys, values = torch.stack(keys, -1), torch.stack(values, -1)
            query = q[..., stride * i, stride * j] * scale
            weights = torch.einsum('bnd,bndo->bno', query, keys).softmax(-1)
            out[..., i, j] = torch.einsum('bno,bndo->bnd', weights, values)
    return out


@pytest.mark.parametrize('h,w', [(1, 1), (2, 3), (4, 4), (5, 7), (9, 6)])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel', [3, 7])
def test_local_attention_matches_definition(h, w, stride, kernel):
    q, k, v = torch.randn(3, 2, 2, 4, h, w, dtype=torch.float64)
    out = local_attention_reference(q, k, v, kernel, stride, scale=0.5)
    expected = brute_force_attention(q, k, v, kernel, stride, 0.5)
    torch.testing.assert_close(out, expected)


def test_local_attention_gradcheck():
    q, k, v = torch.randn(
        3, 1, 2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: local_attention_reference(q, k, v, 3, 2, 0.7),
        (q, k, v))
