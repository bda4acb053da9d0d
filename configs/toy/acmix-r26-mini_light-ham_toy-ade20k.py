# Hamburger (mmseg's LightHamHead, the SegNeXt head) on the small
# ACmix-ResNet-26 of the toy UperNet config, on the bundled toy ADE20K-layout
# data (written by tools/make_toy_data.py). Same data, backbone and schedule
# as that config; only the head differs (no auxiliary head). A smoke test of
# the Ham head with an ACmix backbone, not a benchmark.
_base_ = './acmix-r26-mini_upernet_toy-ade20k.py'

num_classes = 4
model = dict(
    decode_head=dict(
        _delete_=True,
        type='LightHamHead',
        in_channels=[128, 256, 512],
        in_index=[1, 2, 3],
        channels=64,
        ham_channels=64,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        ham_kwargs=dict(
            MD_S=1,
            MD_R=16,
            train_steps=6,
            eval_steps=7,
            inv_t=100,
            rand_init=True)),
    auxiliary_head=None)
