# Mask R-CNN, ACmix-ResNet-50 backbone, COCO, 1x schedule.
# No ImageNet weights exist for ResNet-ACmix, so the backbone starts from
# scratch: all stages train and its BatchNorm statistics update (SyncBN).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='acmix_mm.ACmixResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        init_cfg=None))

# No weight decay on norms, the ACmix rates and positional encodings.
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'rate1': dict(decay_mult=0.),
            'rate2': dict(decay_mult=0.),
            'conv_p': dict(decay_mult=0.),
        }))
