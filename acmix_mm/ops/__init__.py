"""ACmix operators: one file per backend (reference.py, triton.py with
triton_kernels.py, flex.py, sdpa.py) and the one choice between them
(dispatch.py). Triton is imported on first use, so it is optional."""
from .conv_path import (CONV_PATHS, fold_conv_path_bias, fold_conv_path_weight,
                        folded_conv_path, shift_conv_path)
from .dispatch import (ATTN_IMPLS, BACKENDS, LOCAL_ATTENTION, WINDOW_ATTENTION,
                       Decision, check_attn_impl, choose_backend,
                       local_attention, run_local_attention,
                       run_window_attention, unavailable_reason,
                       window_attention)
from .reference import local_attention_reference, window_attention_reference
from .reflection import reflect, reflect_index, reflection_multiplicity
from .softmax import softmax_fp32

__all__ = [
    'ATTN_IMPLS', 'BACKENDS', 'CONV_PATHS', 'Decision', 'LOCAL_ATTENTION',
    'WINDOW_ATTENTION', 'check_attn_impl', 'choose_backend',
    'fold_conv_path_bias', 'fold_conv_path_weight', 'folded_conv_path',
    'local_attention', 'local_attention_reference', 'reflect', 'reflect_index',
    'reflection_multiplicity', 'run_local_attention', 'run_window_attention',
    'shift_conv_path', 'softmax_fp32', 'unavailable_reason',
    'window_attention', 'window_attention_reference'
]
