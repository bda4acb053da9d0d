"""ACmix backbones (ResNet-ACmix, Swin-ACmix) for mmdetection and mmsegmentation.

Importing the package registers its models in the ``acmix_mm`` registry scope,
so configs can refer to them as ``type='acmix_mm.ACmixResNet'``.
"""
from .version import __version__
from . import models  # noqa: F401  (registers the models)

__all__ = ['__version__']
