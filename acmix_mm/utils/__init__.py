"""Checkpoint loading, and the config checks and launch settings of the
training and test scripts."""
from .checkpoint import (CheckpointMismatchError, InvalidCheckpointError,
                         UntrustedCheckpointError, load_pretrained,
                         read_checkpoint, read_weights,
                         trust_local_checkpoints)
from .checks import check_data_roots, check_feature_channels
from .launch import prepare_launch

__all__ = [
    'CheckpointMismatchError', 'InvalidCheckpointError',
    'UntrustedCheckpointError', 'check_data_roots', 'check_feature_channels',
    'load_pretrained', 'prepare_launch', 'read_checkpoint', 'read_weights',
    'trust_local_checkpoints'
]
