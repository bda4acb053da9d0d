# Mask R-CNN, ACmix-Swin-T backbone, COCO 2017, ms-crop-3x with automatic
# mixed precision (needs CUDA).
# Compare with: mmdet Mask R-CNN Swin-T amp-ms-crop-3x
#   (swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py): 46.0 box AP,
#   41.7 mask AP.
_base_ = './mask-rcnn_acmix-swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

optim_wrapper = dict(type='AmpOptimWrapper')
