"""Loading pretrained backbone weights with clear errors."""
import pickle
from collections import OrderedDict
from typing import Callable, Dict, Optional

from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor, nn

StateDict = Dict[str, Tensor]


def select_state_dict(checkpoint: dict) -> StateDict:
    """The weights inside a checkpoint, without wrapper prefixes.

    Accepts a bare state dict or one stored under ``state_dict`` (mmengine)
    or ``model`` (the reference code). Strips ``module.`` (DDP) and, when any
    key has it, keeps only the ``backbone.`` entries of a full detector or
    segmentor, without that prefix.
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must be a dict, got '
                        f'{type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in checkpoint.items())
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = OrderedDict(
            (k[len('backbone.'):], v) for k, v in state_dict.items()
            if k.startswith('backbone.'))
    return state_dict


def load_backbone_checkpoint(
        model: nn.Module,
        filename: str,
        converter: Optional[Callable[[StateDict], StateDict]] = None,
        adapter: Optional[Callable[[StateDict], StateDict]] = None) -> None:
    """Load a pretrained checkpoint into a backbone.

    Args:
        model: the backbone.
        filename: local path or URL of the checkpoint.
        converter: maps another layout (e.g. the reference code's) to the
            model's keys.
        adapter: adapts matching tensors to the model (e.g. resizes tables).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file needs trusted unpickling, no weight of the
            checkpoint fits the model, or some have the wrong shape.
    """
    logger = MMLogger.get_current_instance()
    try:
        checkpoint = CheckpointLoader.load_checkpoint(
            filename, map_location='cpu', logger=logger)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f'{filename} stores objects besides weights, which torch only '
            f'unpickles for trusted files. Load it through tools/train.py or '
            f'tools/test.py (they trust local files), or convert it once with '
            f'tools/model_converters/acmix_swin_to_mm.py --trust-pickle. '
            f'torch said: {str(error).splitlines()[0]}') from error
    state_dict = select_state_dict(checkpoint)
    if converter is not None:
        state_dict = converter(state_dict)
    if adapter is not None:
        state_dict = adapter(state_dict)

    own = model.state_dict()
    matched = [k for k in state_dict if k in own]
    name = type(model).__name__
    if not matched:
        sample = ', '.join(list(state_dict)[:3])
        raise ValueError(
            f'{filename} holds no weights for {name} (its keys look like '
            f'"{sample}"). Is it a checkpoint of this architecture, and does '
            f'it need convert_weights=True?')
    wrong_shape = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model '
        f'{tuple(own[k].shape)}' for k in matched
        if state_dict[k].shape != own[k].shape
    ]
    if wrong_shape:
        raise ValueError(f'{filename} does not fit {name}; shape mismatch '
                         f'in ' + '; '.join(wrong_shape[:5]))
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    model.load_state_dict(state_dict, strict=False)
    logger.info(f'{name}: loaded {len(matched)} tensors from {filename}')
    if missing:
        logger.warning(f'{name}: {len(missing)} tensors not in {filename} '
                       f'keep their initialisation: {", ".join(missing)}')
    if unexpected:
        logger.warning(f'{name}: ignored {len(unexpected)} tensors of '
                       f'{filename}: {", ".join(unexpected)}')
