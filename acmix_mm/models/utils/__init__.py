from .swin_convert import acmix_swin_converter

__all__ = ['acmix_swin_converter']
