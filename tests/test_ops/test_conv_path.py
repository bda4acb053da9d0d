import pytest
import torch

from acmix_mm.ops.conv_path import (fold_conv_path_bias, fold_conv_path_weight,
                                    folded_conv_path, shift_conv_path)


def channel_major(maps: torch.Tensor) -> torch.Tensor:
    """(B, 3 * heads, head_dim, H, W) -> (B, head_dim * 3 * heads, H, W)."""
    return maps.transpose(1, 2).flatten(1, 2)


@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel', [1, 3, 5])
@pytest.mark.parametrize('size', [(1, 1), (2, 3), (7, 6), (9, 11)])
def test_folded_path_equals_fc_then_dep_conv(with_bias, stride, kernel, size):
    heads, head_dim, out = 3, 4, 8
    maps = torch.randn(2, 3 * heads, head_dim, *size, dtype=torch.float64)
    fc_weight = torch.randn(kernel**2, 3 * heads, 1, 1, dtype=torch.float64)
    fc_bias = torch.randn(kernel**2, dtype=torch.float64) if with_bias \
        else None
    dep_weight = torch.randn(
        out, kernel**2, kernel, kernel, dtype=torch.float64)
    expected = shift_conv_path(maps, fc_weight, fc_bias, dep_weight, stride)
    bias = fold_conv_path_bias(fc_bias, dep_weight, *size, stride) \
        if with_bias else None
    folded = folded_conv_path(
        channel_major(maps), fold_conv_path_weight(fc_weight, dep_weight),
        bias, stride)
    torch.testing.assert_close(folded, expected)


def test_folded_path_gradients_match():
    heads, head_dim, out = 2, 4, 8
    maps = torch.randn(
        1, 3 * heads, head_dim, 5, 6, dtype=torch.float64, requires_grad=True)
    fc_weight = torch.randn(
        9, 3 * heads, 1, 1, dtype=torch.float64, requires_grad=True)
    fc_bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    dep_weight = torch.randn(
        out, 9, 3, 3, dtype=torch.float64, requires_grad=True)
    inputs = (maps, fc_weight, fc_bias, dep_weight)
    grad = torch.randn(1, out, 5, 6, dtype=torch.float64)

    expected = torch.autograd.grad(
        shift_conv_path(maps, fc_weight, fc_bias, dep_weight), inputs, grad)
    folded = folded_conv_path(
        channel_major(maps), fold_conv_path_weight(fc_weight, dep_weight),
        fold_conv_path_bias(fc_bias, dep_weight, 5, 6))
    for got, want in zip(torch.autograd.grad(folded, inputs, grad), expected):
        torch.testing.assert_close(got, want)


def test_folded_path_accepts_channels_last_views():
    maps = torch.randn(2, 6, 4, 7, 7)
    fc_weight, dep_weight = torch.randn(9, 6, 1, 1), torch.randn(8, 9, 3, 3)
    expected = shift_conv_path(maps, fc_weight, None, dep_weight)
    nhwc = channel_major(maps).permute(0, 2, 3, 1).contiguous()
    view = nhwc.permute(0, 3, 1, 2)  # channels-last, no copy
    folded = folded_conv_path(view,
                              fold_conv_path_weight(fc_weight, dep_weight))
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
