"""Registry of the ``acmix_mm`` scope.

Its ``MODELS`` is a child of mmengine's root ``MODELS``, so a config whose
``default_scope`` is ``mmdet`` or ``mmseg`` can build
``type='acmix_mm.ACmixSwinTransformer'``: mmengine imports this module and the
modules in ``locations`` on first use.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='acmix_mm',
    locations=['acmix_mm.models'])
