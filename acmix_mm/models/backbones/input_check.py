"""Validation of backbone inputs."""
from torch import Tensor


def check_image_batch(x: Tensor, in_channels: int, owner: str) -> None:
    """Raise a clear error unless ``x`` is a (B, in_channels, H, W) tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f'{owner} expects a torch.Tensor of shape (B, '
                        f'{in_channels}, H, W), got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{owner} expects a 4D (B, C, H, W) tensor, got '
                         f'{x.dim()}D input of shape {tuple(x.shape)}')
    if x.shape[1] != in_channels:
        raise ValueError(f'{owner} was built for in_channels={in_channels} '
                         f'but the input has {x.shape[1]} channels '
                         f'(shape {tuple(x.shape)})')
