from .acmix import ACmix
from .shift_window_acmix import ShiftWindowACmix

__all__ = ['ACmix', 'ShiftWindowACmix']
