# UperNet, ACmix-ResNet-50 backbone, ADE20K 512x512, 80k iterations.
# Compare with: mmseg UperNet R-50 80k
#   (upernet/upernet_r50_4xb4-80k_ade20k-512x512.py,
#   ImageNet-pretrained ResNet-50-V1c): 40.70 mIoU (single scale).
# No ImageNet weights exist for ResNet-ACmix, so the backbone trains from
# scratch with synchronized BatchNorm (as the heads); expect a gap to the
# pretrained baseline.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='acmix_mm.ACmixResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
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

# The total batch size the learning rate is set for (4 GPUs x 4 images):
# tools/train.py --auto-scale-lr scales it to other GPU counts.
auto_scale_lr = dict(enable=False, base_batch_size=16)
