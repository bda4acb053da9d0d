# Mask R-CNN, ACmix-Swin-T backbone, COCO 2017, 1x schedule.
# Compare with: mmdet Mask R-CNN Swin-T 1x
#   (swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py): 42.7 box AP, 39.3 mask AP.
# Only the backbone type, its ImageNet weights and the weight-decay exceptions
# differ from that config.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

# Released ImageNet-1k ACmix-Swin-T weights in the reference layout
# (download link in README.md), converted on load (recognised by their keys).
pretrained = 'checkpoints/acmix_swin_tiny_patch4_window7_224.pth'
model = dict(
    backbone=dict(
        type='acmix_mm.ACmixSwinTransformer',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

# No weight decay on the ACmix path-mixing rates (norms and relative position
# tables are already excluded by the base config).
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'rate1': dict(decay_mult=0.),
        'rate2': dict(decay_mult=0.),
    }))
