# Hamburger (mmseg's LightHamHead), ACmix-ResNet-50 backbone, ADE20K
# 512x512, 160k iterations, batch 16 on one GPU (the SegNeXt schedule).
# Compare with:
#   HamNet R-101 (Geng et al., "Is Attention Better Than Matrix
#   Decomposition?", ICLR 2021): 44.9 mIoU single scale, 46.0 multi-scale;
#   mmseg SegNeXt MSCAN-B with the same head and schedule
#   (segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512.py):
#   48.03 mIoU, 49.68 mIoU (ms+flip).
# No ImageNet weights exist for ResNet-ACmix, so the backbone trains from
# scratch with synchronized BatchNorm (plain BN on one GPU); expect a gap to
# the pretrained baselines.
_base_ = 'mmseg::segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512.py'  # noqa

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='acmix_mm.ACmixResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),
    # Stages 2-4 (strides 8, 16, 32), as SegNeXt feeds the head.
    decode_head=dict(in_channels=[512, 1024, 2048], in_index=[1, 2, 3]))

# No weight decay on norms, the ACmix rates and positional encodings.
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'rate1': dict(decay_mult=0.),
            'rate2': dict(decay_mult=0.),
            'conv_p': dict(decay_mult=0.),
        }))

# The total batch size the learning rate is set for (1 GPU x 16 images):
# tools/train.py --auto-scale-lr scales it to other GPU counts.
auto_scale_lr = dict(enable=False, base_batch_size=16)
