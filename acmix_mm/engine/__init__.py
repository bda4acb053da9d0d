"""Helpers shared by tools/train.py and tools/test.py."""
from .checkpoint_loading import trust_local_checkpoints
from .checks import check_data_roots, check_feature_channels
from .launch import prepare_launch

__all__ = [
    'check_data_roots', 'check_feature_channels', 'prepare_launch',
    'trust_local_checkpoints'
]
