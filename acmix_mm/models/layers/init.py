"""Initialisation shared by both ACmix flavours."""
import torch
from torch import nn


@torch.no_grad()
def reset_acmix_parameters(layer: nn.Module) -> None:
    """Set ``layer.rate1``/``rate2`` to 0.5 and make every group of
    ``layer.dep_conv`` a set of pure shifts.

    Input ``j`` of each output channel gets a single 1 at kernel position
    ``(j // k, j % k)``, so the convolution path starts as shift-and-sum.
    """
    layer.rate1.fill_(0.5)
    layer.rate2.fill_(0.5)
    weight = layer.dep_conv.weight
    kernel_size = weight.shape[-1]
    weight.zero_()
    for tap in range(kernel_size * kernel_size):
        weight[:, tap, tap // kernel_size, tap % kernel_size] = 1.
