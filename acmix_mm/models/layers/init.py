"""Initialisation shared by both ACmix flavours."""
import torch
from torch import nn


@torch.no_grad()
def init_shift_kernel(dep_conv: nn.Conv2d) -> None:
    """Make every group of ``dep_conv`` a set of pure shifts.

    Input ``j`` of each output channel gets a single 1 at kernel position
    ``(j // k, j % k)``, so the convolution path starts as shift-and-sum.
    """
    kernel_size = dep_conv.kernel_size[0]
    dep_conv.weight.zero_()
    for tap in range(kernel_size * kernel_size):
        dep_conv.weight[:, tap, tap // kernel_size, tap % kernel_size] = 1.


@torch.no_grad()
def init_rates(*rates: nn.Parameter) -> None:
    """Set the path-mixing rates to their initial 0.5."""
    for rate in rates:
        rate.fill_(0.5)
