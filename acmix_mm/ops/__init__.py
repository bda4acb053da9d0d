"""ACmix operators. Each has a plain PyTorch reference implementation."""
from .conv_path import shift_conv_path
from .local_attention_ref import local_attention_reference, reflect_index
from .softmax import softmax_fp32

__all__ = [
    'local_attention_reference', 'reflect_index', 'shift_conv_path',
    'softmax_fp32'
]
