"""Reading checkpoint files and fitting their weights to a backbone.

Weights reach a backbone in several ways: ``init_cfg=dict(type='Pretrained')``
(:func:`load_pretrained`), ``load_from`` or ``resume`` of a whole detector or
segmentor (mmengine), and the model converter. All of them end in
``nn.Module.load_state_dict``, where the backbones' load hooks take their
entries with :func:`pop_module_weights`, adapt other layouts, and check the
result with :func:`check_weights`, so every route accepts and rejects the
same checkpoints.
"""
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional

import torch
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor, nn

StateDict = Dict[str, Tensor]

PARTIAL_HINT = ('set allow_partial_checkpoint=True in the backbone config to '
                'load it anyway, keeping their initialisation')


class CheckpointMismatchError(ValueError):
    """The weights of a checkpoint do not fit the model."""


class InvalidCheckpointError(ValueError):
    """A file that is not a readable checkpoint."""


class UntrustedCheckpointError(ValueError):
    """A checkpoint stores objects torch only unpickles from trusted files."""


def _torch_reason(error: Exception) -> str:
    """The informative line of a torch.load error."""
    text = str(error)
    unsupported = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    if unsupported:
        return f'it stores {unsupported.group(1)}'
    unpickler = re.search(r'WeightsUnpickler error:\s*(.+)', text)
    if unpickler:
        return unpickler.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _load_error(filename: str, error: Exception) -> ValueError:
    """The error to raise when torch cannot load a local file."""
    if isinstance(error, pickle.UnpicklingError) and \
            'Weights only load failed' in str(error) and \
            'Unsupported operand' not in str(error):  # else not a pickle
        return UntrustedCheckpointError(
            f'{filename} stores Python objects besides tensors '
            f'({_torch_reason(error)}), which torch only unpickles from '
            f'trusted files. If you trust it, call '
            f'acmix_mm.utils.trust_local_checkpoints() before loading it, or '
            f'save its weights alone with torch.save')
    if isinstance(error, ModuleNotFoundError):
        return InvalidCheckpointError(
            f'unpickling {filename} needs the Python module {error.name!r} '
            f'(saved with the weights, e.g. a training config); install it '
            f'and try again')
    return InvalidCheckpointError(
        f'{filename} is not a valid checkpoint: torch cannot read it '
        f'({_torch_reason(error)}). It may be truncated (an interrupted '
        f'download or save) or not a file written by torch.save; download '
        f'or save it again')


def _load_local_trusted(filename: str, map_location=None) -> dict:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    try:
        return torch.load(
            filename, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for damaged files
        raise _load_error(filename, error) from error


def trust_local_checkpoints() -> None:
    """Let mmengine unpickle local checkpoint files completely.

    mmengine writes its training state (log history with numpy arrays and
    statistics methods) into every checkpoint, which torch >= 2.6 refuses to
    load by default (``weights_only=True``); resuming, ``load_from`` and
    testing would fail. The training and test scripts call this for local
    files, which are the user's own; as with any pickle, only load
    checkpoints you trust. Remote checkpoints keep mmengine's default
    loading. Damaged files are reported as not valid checkpoints.
    """
    CheckpointLoader.register_scheme(
        prefixes='', force=True)(
            _load_local_trusted)


def read_checkpoint(filename: str) -> dict:
    """The dict stored in a checkpoint file (local path or URL), on the CPU.

    Raises:
        FileNotFoundError: no such local file.
        InvalidCheckpointError: the file is not a valid checkpoint (damaged,
            truncated or not written by torch.save).
        UntrustedCheckpointError: the file stores Python objects that torch
            only unpickles from trusted files.
    """
    local = '://' not in filename
    if local and not osp.isfile(osp.expanduser(filename)):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    try:
        checkpoint = CheckpointLoader.load_checkpoint(
            filename, map_location='cpu', logger='current')
    except (InvalidCheckpointError, UntrustedCheckpointError):
        raise  # from the trusted loader
    except Exception as error:
        if not local:
            raise
        raise _load_error(filename, error) from error
    if not isinstance(checkpoint, dict):
        raise InvalidCheckpointError(
            f'{filename} is not a valid checkpoint: it holds a '
            f'{type(checkpoint).__name__}, not a dict of weights')
    return checkpoint


def read_weights(filename: str) -> StateDict:
    """The weights of a checkpoint file: a bare state dict, or the one under
    ``state_dict`` (mmengine) or ``model`` (the reference code).

    Raises:
        FileNotFoundError, InvalidCheckpointError, UntrustedCheckpointError:
            see :func:`read_checkpoint`; also InvalidCheckpointError when the
            file holds no tensors.
    """
    checkpoint = read_checkpoint(filename)
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    weights = OrderedDict((key, value) for key, value in checkpoint.items()
                          if isinstance(value, Tensor))
    if not weights:
        entries = ', '.join(map(str, list(checkpoint)[:5]))
        raise InvalidCheckpointError(
            f'{filename} is not a valid checkpoint: it holds no tensors '
            f'(entries: {entries})')
    return weights


def pop_module_weights(state_dict: dict, prefix: str) -> StateDict:
    """Remove the entries under ``prefix`` from ``state_dict`` and return
    them without it.

    A ``module.`` prefix (DataParallel / DDP) is stripped, and when some keys
    start with ``backbone.`` (a whole detector or segmentor loaded into its
    backbone alone) only those are kept, without ``backbone.``.
    """
    weights = OrderedDict()
    for key in [key for key in state_dict if key.startswith(prefix)]:
        name = key[len(prefix):]
        if name.startswith('module.'):
            name = name[len('module.'):]
        weights[name] = state_dict.pop(key)
    if any(name.startswith('backbone.') for name in weights):
        weights = OrderedDict((name[len('backbone.'):], value)
                              for name, value in weights.items()
                              if name.startswith('backbone.'))
    return weights


def _is_under(name: str, parents: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + '.') for p in parents)


def unloaded_layers(
    own_keys: Iterable[str],
    loaded_keys: Iterable[str],
    optional: Iterable[str] = ()) -> List[str]:
    """Modules of which no tensor is loaded, each named by its largest
    ancestor (block, stage) that is left without weights entirely.

    Args:
        own_keys: the model's state-dict keys.
        loaded_keys: the keys the checkpoint provides.
        optional: modules that may stay unloaded (e.g. output norms).
    """
    loaded_keys = set(loaded_keys)
    optional = tuple(optional)
    owner_loaded: Dict[str, bool] = OrderedDict()
    for key in own_keys:
        owner = key.rpartition('.')[0] or key
        if not _is_under(owner, optional):
            owner_loaded[owner] = owner_loaded.get(owner, False) or \
                key in loaded_keys
    layers: List[str] = []
    for owner, loaded in owner_loaded.items():
        if loaded or _is_under(owner, layers):
            continue
        parts = owner.split('.')
        for depth in range(1, len(parts) + 1):
            ancestor = '.'.join(parts[:depth])
            if not any(done for name, done in owner_loaded.items()
                       if _is_under(name, [ancestor])):
                layers.append(ancestor)
                break
    return layers


def check_weights(module: nn.Module,
                  weights: StateDict,
                  optional: Iterable[str] = (),
                  allow_partial: bool = False) -> None:
    """Check that ``weights`` (in the module's layout) fit ``module``.

    Tensors of another shape and layers left without any weight are errors;
    with ``allow_partial`` the former are dropped from ``weights`` and both
    keep their initialisation, with a warning. Layers under ``optional`` may
    be missing. Single missing or extra tensors are left to
    ``load_state_dict``'s report.

    Raises:
        CheckpointMismatchError: the weights do not fit.
    """
    name = type(module).__name__
    own = OrderedDict((key, value)
                      for key, value in module.state_dict().items()
                      if not key.endswith('num_batches_tracked'))
    matched = [key for key in weights if key in own]
    if not matched:
        sample = ', '.join(list(weights)[:3])
        raise CheckpointMismatchError(
            f'the checkpoint holds no weights for {name}' +
            (f' (its keys look like "{sample}")' if sample else '') +
            '; is it a checkpoint of this architecture?')
    wrong_shape = [
        key for key in matched if weights[key].shape != own[key].shape
    ]
    shapes = '; '.join(f'{key}: checkpoint {tuple(weights[key].shape)} vs '
                       f'model {tuple(own[key].shape)}'
                       for key in wrong_shape[:5])
    if wrong_shape and not allow_partial:
        raise CheckpointMismatchError(
            f'the checkpoint does not fit {name}; shape mismatch in '
            f'{len(wrong_shape)} tensors: {shapes}. Load a checkpoint of '
            f'this architecture, or {PARTIAL_HINT}')
    for key in wrong_shape:
        del weights[key]
    missing = unloaded_layers(own, weights, optional)
    if missing and not allow_partial:
        raise CheckpointMismatchError(
            f'the checkpoint has no weights for these parts of {name}: '
            f'{", ".join(missing)}. Is it a checkpoint of another depth or '
            f'arch? Load a checkpoint of this architecture, or '
            f'{PARTIAL_HINT}')
    logger = MMLogger.get_current_instance()
    if wrong_shape:
        logger.warning(f'{name}: allow_partial_checkpoint: skipped tensors '
                       f'of another shape: {shapes}')
    if missing:
        logger.warning(f'{name}: allow_partial_checkpoint: no weights for '
                       f'{", ".join(missing)}')


def pretrained_checkpoint(init_cfg) -> Optional[str]:
    """The checkpoint of a ``dict(type='Pretrained', checkpoint=...)``
    init_cfg, else None."""
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        return init_cfg['checkpoint']
    return None


def load_pretrained(module: nn.Module, filename: str) -> None:
    """Load the weights of a checkpoint file into ``module`` through its
    load hooks, logging what it leaves out.

    Raises:
        FileNotFoundError: no such local file.
        ValueError: the file is not a valid checkpoint, needs trusted
            unpickling, or (:class:`CheckpointMismatchError`) does not fit.
    """
    weights = read_weights(filename)
    try:
        missing, unexpected = module.load_state_dict(weights, strict=False)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f'{filename}: {error}') from None
    name = type(module).__name__
    logger = MMLogger.get_current_instance()
    logger.info(f'{name}: loaded weights from {filename}')
    missing = [
        key for key in missing if not key.endswith('num_batches_tracked')
    ]
    if missing:
        logger.warning(f'{name}: {len(missing)} tensors not in {filename} '
                       f'keep their initialisation: {", ".join(missing)}')
    if unexpected:
        logger.warning(f'{name}: ignored {len(unexpected)} tensors of '
                       f'{filename}: {", ".join(unexpected)}')
