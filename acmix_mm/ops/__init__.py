"""ACmix operators: plain PyTorch references, Triton kernels (imported on
first use, so Triton is optional) and the dispatch between them."""
from .conv_path import (fold_conv_path_bias, fold_conv_path_weight,
                        folded_conv_path, shift_conv_path)
from .dispatch import (ATTN_IMPLS, check_attn_impl, local_attention,
                       resolve_attn_impl)
from .reference import local_attention_reference
from .reflection import reflect_index
from .softmax import softmax_fp32

__all__ = [
    'ATTN_IMPLS', 'check_attn_impl', 'fold_conv_path_bias',
    'fold_conv_path_weight', 'folded_conv_path', 'local_attention',
    'local_attention_reference', 'reflect_index', 'resolve_attn_impl',
    'shift_conv_path', 'softmax_fp32'
]
