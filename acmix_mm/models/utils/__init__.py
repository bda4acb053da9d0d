from .checkpoint import load_backbone_checkpoint, select_state_dict
from .swin_convert import acmix_swin_converter

__all__ = ['acmix_swin_converter', 'load_backbone_checkpoint',
           'select_state_dict']
