"""Softmax computed in at least float32."""
import torch
from torch import Tensor


def softmax_fp32(logits: Tensor, dim: int) -> Tensor:
    """Softmax along ``dim`` in float32 (float64 stays float64), returned in
    the dtype of ``logits``."""
    compute = torch.promote_types(logits.dtype, torch.float32)
    return logits.softmax(dim, dtype=compute).to(logits.dtype)
