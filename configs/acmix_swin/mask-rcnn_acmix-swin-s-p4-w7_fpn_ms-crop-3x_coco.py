# Mask R-CNN, ACmix-Swin-S backbone, COCO 2017, multi-scale + crop, 3x.
# Compare with: mmdet Mask R-CNN Swin-S ms-crop-3x
#   (swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py, trained with
#   AMP): 48.2 box AP, 43.2 mask AP.
_base_ = './mask-rcnn_acmix-swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

# Released ImageNet-1k ACmix-Swin-S weights (download link in README.md).
pretrained = 'checkpoints/acmix_swin_small_patch4_window7_224.pth'
model = dict(
    backbone=dict(
        depths=[2, 2, 18, 2],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
