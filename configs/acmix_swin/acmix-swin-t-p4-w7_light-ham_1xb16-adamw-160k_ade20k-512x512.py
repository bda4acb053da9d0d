# Hamburger (mmseg's LightHamHead), ACmix-Swin-T backbone, ADE20K 512x512,
# 160k iterations, batch 16 on one GPU (the SegNeXt schedule).
# Compare with:
#   HamNet R-101 (Geng et al., "Is Attention Better Than Matrix
#   Decomposition?", ICLR 2021): 44.9 mIoU single scale, 46.0 multi-scale;
#   mmseg SegNeXt MSCAN-B with the same head and schedule
#   (segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512.py):
#   48.03 mIoU, 49.68 mIoU (ms+flip).
# Only the backbone (ACmix-Swin-T with its ImageNet weights, as in the Swin
# UperNet config), the head's in_channels and the weight-decay exceptions
# differ from that config.
_base_ = 'mmseg::segnext/segnext_mscan-b_1xb16-adamw-160k_ade20k-512x512.py'  # noqa

# Released ImageNet-1k ACmix-Swin-T weights in the reference layout
# (download link in README.md), converted on load (recognised by their keys).
pretrained = 'checkpoints/acmix_swin_tiny_patch4_window7_224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='acmix_mm.ACmixSwinTransformer',
        pretrain_img_size=224,
        embed_dims=96,
        patch_size=4,
        window_size=7,
        mlp_ratio=4,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        strides=(4, 2, 2, 2),
        out_indices=(0, 1, 2, 3),
        qkv_bias=True,
        qk_scale=None,
        patch_norm=True,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.3,
        use_abs_pos_embed=False,
        act_cfg=dict(type='GELU'),
        norm_cfg=dict(type='LN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # Stages 2-4 (strides 8, 16, 32), as SegNeXt feeds the head.
    decode_head=dict(in_channels=[192, 384, 768], in_index=[1, 2, 3]))

# No weight decay on the ACmix path-mixing rates and the relative position
# tables (norms are already excluded by the base config).
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.),
            'rate1': dict(decay_mult=0.),
            'rate2': dict(decay_mult=0.),
        }))

# The total batch size the learning rate is set for (1 GPU x 16 images):
# tools/train.py --auto-scale-lr scales it to other GPU counts.
auto_scale_lr = dict(enable=False, base_batch_size=16)
