"""Loading local mmengine checkpoints under torch >= 2.6."""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def _load_local_trusted(filename: str, map_location=None) -> dict:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def trust_local_checkpoints() -> None:
    """Let mmengine unpickle local checkpoint files completely.

    mmengine writes its training state (log history with numpy arrays and
    statistics methods) into every checkpoint, which torch >= 2.6 refuses to
    load by default (``weights_only=True``); resuming, ``load_from`` and
    testing would fail. The tools call this for local files, which are the
    user's own; as with any pickle, only load checkpoints you trust. Remote
    checkpoints keep mmengine's default loading.
    """
    CheckpointLoader.register_scheme(prefixes='', force=True)(
        _load_local_trusted)
