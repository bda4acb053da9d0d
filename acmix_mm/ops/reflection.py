"""The reflection rule: where ACmix's windows read outside the map."""
import torch
from torch import Tensor


def reflect_index(size: int, pad: int, device=None) -> Tensor:
    """Source index of each position of a reflection-padded axis.

    Positions ``-pad .. size + pad - 1`` are mapped back into ``0 .. size - 1``
    by repeated mirroring at the edges (edge pixel not repeated), so any pad
    works for any size; a size-1 axis maps every position to 0. Where
    ``pad < size`` this equals ``torch.nn.ReflectionPad``.

    Returns:
        Tensor: int64 indices of shape (size + 2 * pad,).
    """
    positions = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)
