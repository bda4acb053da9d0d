# UperNet, ACmix-Swin-S backbone, ADE20K 512x512, 160k iterations.
# Compare with: mmseg UperNet Swin-S 160k
#   (swin/swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py):
#   47.72 mIoU (single scale).
_base_ = './acmix-swin-t-p4-w7_upernet_8xb2-160k_ade20k-512x512.py'

# Released ImageNet-1k ACmix-Swin-S weights (download link in README.md).
pretrained = 'checkpoints/acmix_swin_small_patch4_window7_224.pth'
model = dict(
    backbone=dict(
        depths=[2, 2, 18, 2],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
