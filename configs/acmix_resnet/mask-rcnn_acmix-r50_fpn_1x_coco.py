# Mask R-CNN, ACmix-ResNet-50 backbone, COCO 2017, 1x schedule.
# Compare with: mmdet Mask R-CNN R-50-FPN 1x
#   (mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py, ImageNet-pretrained
#   ResNet-50): 38.2 box AP, 34.7 mask AP.
# No ImageNet weights exist for ResNet-ACmix, so the whole detector trains from
# scratch. As in mmdet's from-scratch configs ("Rethinking ImageNet
# Pre-training"), every layer uses GroupNorm, which needs no large batches, and
# nothing is frozen. Detectors trained from scratch need longer schedules
# (mmdet's scratch configs use 6x), so 1x results are a lower bound.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='acmix_mm.ACmixResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        zero_init_residual=False,
        init_cfg=None),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))

# No weight decay on norms, the ACmix rates and positional encodings.
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'rate1': dict(decay_mult=0.),
            'rate2': dict(decay_mult=0.),
            'conv_p': dict(decay_mult=0.),
        }))
