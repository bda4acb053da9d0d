"""ACmix backbones (ResNet-ACmix, Swin-ACmix) for mmdetection and
mmsegmentation.

Importing the package imports nothing from OpenMMLab, so ``acmix_mm.ops`` (the
ACmix operators) works with only torch installed. The models register in the
``acmix_mm`` registry scope when ``acmix_mm.models`` is imported, which
mmengine does on first use of a ``type='acmix_mm.ACmixResNet'``-style name.
"""
from .version import __version__

__all__ = ['__version__']
