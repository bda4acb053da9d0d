from .acmix_resnet import ACmixResNet
from .acmix_swin import ACmixSwinTransformer

__all__ = ['ACmixResNet', 'ACmixSwinTransformer']
