# UperNet with a small ACmix-ResNet-26 backbone on the bundled toy
# ADE20K-layout data (background + 3 shape classes, 128x128 images; written
# by tools/make_toy_data.py). Trains from scratch in a few minutes on a CPU;
# a smoke test of the whole mmseg workflow, not a benchmark. Uses SyncBN like
# the full configs (plain BN when run in one process).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'

data_root = 'data/toy_ade20k'
# PNG labels 1-4 (background, circle, square, triangle) are ADE20K's first
# four classes; evaluate only those, drawn in the colours of the toy
# detection config.
metainfo = dict(
    classes=('wall', 'building', 'sky', 'floor'),
    palette=[(70, 70, 70), (220, 20, 60), (0, 128, 255), (255, 190, 0)])
num_classes = 4
crop_size = (128, 128)
max_iters = 200
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='acmix_mm.ACmixResNet',
        depth=26,
        base_channels=16,
        head=2,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),
    decode_head=dict(
        in_channels=[64, 128, 256, 512], channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=256, channels=32, num_classes=num_classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

# Validation halfway and at the end: two points of the validation curve.
train_cfg = dict(max_iters=max_iters, val_interval=max_iters // 2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=1e-5,
        by_epoch=False,
        begin=30,
        end=max_iters),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'rate1': dict(decay_mult=0.),
            'rate2': dict(decay_mult=0.),
            'conv_p': dict(decay_mult=0.),
        }))
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(
        by_epoch=False, interval=100, max_keep_ckpts=2, save_last=True))
randomness = dict(seed=0)
