"""The reflection rule: where ACmix's windows read outside the map."""
import torch
from torch import Tensor


def reflect(positions: Tensor, size: int) -> Tensor:
    """Positions mapped into ``0 .. size - 1`` by repeated mirroring at the
    edges (edge pixel not repeated, index period ``2 * (size - 1)``); a
    size-1 axis maps every position to 0. Elementwise, any shape."""
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)


def reflect_index(size: int, pad: int, device=None) -> Tensor:
    """Source index of each position of a reflection-padded axis.

    Positions ``-pad .. size + pad - 1`` are mapped back into ``0 .. size - 1``
    by :func:`reflect`, so any pad works for any size. Where ``pad < size``
    this equals ``torch.nn.ReflectionPad``.

    Returns:
        Tensor: int64 indices of shape (size + 2 * pad,).
    """
    return reflect(torch.arange(-pad, size + pad, device=device), size)


def reflection_multiplicity(query_pos: Tensor, key_pos: Tensor, size: int,
                            kernel_size: int) -> Tensor:
    """How many of the ``kernel_size`` window offsets around ``query_pos``
    land on ``key_pos`` after :func:`reflect`, along one axis of length
    ``size``; elementwise over broadcast int tensors.

    The window of a query counts a key once per offset that lands on it, so
    a 2-D window weighs key ``(y, x)`` by the product of the multiplicities
    of its rows and columns (0 outside the window; 1, 2, or more on maps
    smaller than the window, at the edges).
    """
    half = kernel_size // 2
    count = torch.zeros_like(key_pos)
    for offset in range(-half, half + 1):
        count = count + (reflect(query_pos + offset, size) == key_pos)
    return count
