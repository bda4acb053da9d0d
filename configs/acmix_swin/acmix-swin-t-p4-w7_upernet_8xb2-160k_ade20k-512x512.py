# UperNet, ACmix-Swin-T backbone, ADE20K 512x512, 160k iterations.
# Compare with: mmseg UperNet Swin-T 160k
#   (swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py):
#   44.41 mIoU (single scale).
# Only the backbone type, its ImageNet weights and the weight-decay exceptions
# differ from that config.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa

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

# The total batch size the learning rate is set for (8 GPUs x 2 images):
# tools/train.py --auto-scale-lr scales it to other GPU counts.
auto_scale_lr = dict(enable=False, base_batch_size=16)
