"""Benchmark ACmix: the local-attention op and whole backbones, on a GPU.

Op level: the reference PyTorch op, the fused Triton op and torch's
FlexAttention (compiled; the same math through a score modifier adding
log(reflection multiplicity) and a block mask of the 7x7 window) at the
ACmix-ResNet-50 layer shapes for ImageNet 224 (batch 64) and COCO 800x1333
(batch 2): median forward and forward+backward time, peak memory, and
achieved bytes/s against the roofline bound (q, k, v read once, the output
and softmax statistics written once).

Backbone level: train-step images/s and peak memory of ACmix-R50 and
ACmix-Swin-T (fused and reference) beside mmdet's ResNet-50 and Swin-T, and
the peak memory of one Mask R-CNN training step of ACmix-R50 vs ResNet-50,
at 2x3x800x1333 with AMP.

Writes ``<out-dir>/benchmark_acmix.json`` and ``benchmark_acmix.png`` and
prints Markdown tables. ``--quick`` runs tiny shapes (also on the CPU) to
check the script itself.

Usage:
    python tools/analysis_tools/benchmark_acmix.py --out-dir work_dirs/bench
"""
import argparse
import json
import math
import os
import os.path as osp
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from acmix_mm.ops import local_attention_reference

# (name, batch, channels, height, width, stride) at ACmix-ResNet-50's ACmix
# layers: 4 heads, so head_dim = channels / 4.
IMAGENET_SHAPES = [
    ('in224/stage1', 64, 64, 56, 56, 1),
    ('in224/stage2.0', 64, 128, 56, 56, 2),
    ('in224/stage2', 64, 128, 28, 28, 1),
    ('in224/stage3', 64, 256, 14, 14, 1),
    ('in224/stage4', 64, 512, 7, 7, 1),
]
COCO_SHAPES = [
    ('coco/stage1', 2, 64, 200, 334, 1),
    ('coco/stage2.0', 2, 128, 200, 334, 2),
    ('coco/stage2', 2, 128, 100, 167, 1),
    ('coco/stage3', 2, 256, 50, 84, 1),
    ('coco/stage4', 2, 512, 25, 42, 1),
]
QUICK_SHAPES = [('quick/s1', 2, 16, 9, 11, 1), ('quick/s2', 2, 32, 8, 7, 2)]
HEADS, KERNEL = 4, 7
# Peak HBM bandwidth (bytes/s) by device name, for the roofline fraction.
PEAK_BANDWIDTH = {'H100': 3.35e12, 'H200': 4.8e12, 'A100': 2.0e12}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default='work_dirs/benchmark_acmix')
    parser.add_argument('--dtype', default='bfloat16',
                        choices=['float16', 'bfloat16', 'float32'])
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--sections', nargs='+', default=['op', 'backbone'],
                        choices=['op', 'backbone'])
    parser.add_argument('--peak-bandwidth', type=float,
                        help='bytes/s (default: from the device name)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny shapes, few repeats: checks the script')
    return parser.parse_args()


def reflect(positions: Tensor, size: int) -> Tensor:
    """Reflection by repeated mirroring (see acmix_mm.ops.reflect_index)."""
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    folded = torch.remainder(positions, period)
    return torch.where(folded < size, folded, period - folded)


def local_attention_flex(q: Tensor, k: Tensor, v: Tensor, kernel_size: int,
                         stride: int, scale: float,
                         attention: Optional[Callable] = None) -> Tensor:
    """The ACmix local attention as FlexAttention over all key pixels.

    Each key's logit gets log(multiplicity): the number of window offsets
    whose reflected position is that key (0 outside the window). Shapes as
    ``local_attention_reference``.
    """
    from torch.nn.attention.flex_attention import (create_block_mask,
                                                   flex_attention)
    attention = attention or flex_attention
    batch, heads, dim, height, width = k.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    half = kernel_size // 2

    def tokens(t: Tensor) -> Tensor:
        return t.flatten(3).transpose(2, 3)

    def hits(query_pos: Tensor, key_pos: Tensor, size: int) -> Tensor:
        count = torch.zeros_like(key_pos)
        for offset in range(-half, half + 1):
            count = count + (reflect(query_pos + offset, size) == key_pos)
        return count

    def positions(q_idx: Tensor, kv_idx: Tensor):
        return (q_idx // out_w * stride, q_idx % out_w * stride,
                kv_idx // width, kv_idx % width)

    def score_mod(score, b, h, q_idx, kv_idx):
        qy, qx, ky, kx = positions(q_idx, kv_idx)
        multiplicity = hits(qy, ky, height) * hits(qx, kx, width)
        return score + torch.log(multiplicity.to(score.dtype))

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx, ky, kx = positions(q_idx, kv_idx)
        return ((qy - ky).abs() <= half) & ((qx - kx).abs() <= half)

    block_mask = create_block_mask(mask_mod, None, None, out_h * out_w,
                                   height * width, device=q.device)
    out = attention(tokens(q[..., ::stride, ::stride]), tokens(k), tokens(v),
                    score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out.transpose(2, 3).reshape(batch, heads, dim, out_h, out_w)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], None], device: torch.device,
            repeats: int) -> Dict[str, float]:
    """Median seconds of ``fn`` after two warm-up calls, and its peak memory
    in bytes above what was allocated before (CUDA only)."""
    for _ in range(2):
        fn()
    synchronize(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) - base \
        if device.type == 'cuda' else float('nan')
    return dict(seconds=statistics.median(times), peak_bytes=peak)


def op_implementations(device: torch.device) -> Dict[str, Callable]:
    impls = {'reference': local_attention_reference}
    if device.type == 'cuda':
        from acmix_mm.ops.local_attention_function import \
            local_attention_fused
        from torch.nn.attention.flex_attention import flex_attention
        compiled = torch.compile(flex_attention, dynamic=False)
        impls['fused'] = local_attention_fused
        impls['flex'] = lambda *args: local_attention_flex(
            *args, attention=compiled)
    return impls


def roofline_bytes(batch: int, channels: int, height: int, width: int,
                   stride: int, element_size: int) -> int:
    out_pixels = math.ceil(height / stride) * math.ceil(width / stride)
    return (element_size * batch * channels *
            (2 * out_pixels + 2 * height * width) +
            4 * batch * HEADS * out_pixels)


def benchmark_ops(shapes: List, dtype: torch.dtype, device: torch.device,
                  repeats: int, bandwidth: float) -> List[dict]:
    rows = []
    impls = op_implementations(device)
    for name, batch, channels, height, width, stride in shapes:
        head_dim = channels // HEADS
        scale = head_dim**-0.5
        q, k, v = (torch.randn(batch, HEADS, head_dim, height, width,
                               device=device, dtype=dtype,
                               requires_grad=True) for _ in range(3))
        grad = torch.randn_like(local_attention_reference(
            q.detach(), k.detach(), v.detach(), KERNEL, stride, scale))
        bytes_moved = roofline_bytes(batch, channels, height, width, stride,
                                     q.element_size())
        for impl, fn in impls.items():
            row = dict(shape=name, impl=impl, batch=batch,
                       channels=channels, height=height, width=width,
                       stride=stride)
            try:
                with torch.no_grad():
                    forward = measure(
                        lambda: fn(q, k, v, KERNEL, stride, scale), device,
                        repeats)
                both = measure(
                    lambda: torch.autograd.grad(
                        fn(q, k, v, KERNEL, stride, scale), (q, k, v), grad),
                    device, repeats)
            except torch.cuda.OutOfMemoryError:
                row.update(error='out of memory')
                torch.cuda.empty_cache()
            else:
                row.update(
                    forward_ms=forward['seconds'] * 1e3,
                    forward_backward_ms=both['seconds'] * 1e3,
                    peak_mib=both['peak_bytes'] / 2**20,
                    forward_gbps=bytes_moved / forward['seconds'] / 1e9,
                    roofline_fraction=bytes_moved / forward['seconds'] /
                    bandwidth)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def build_backbones(quick: bool) -> Dict[str, Callable]:
    from mmdet.models.backbones import ResNet, SwinTransformer

    from acmix_mm.models import ACmixResNet, ACmixSwinTransformer
    swin = dict(depths=(1, 1, 1, 1)) if quick else {}
    return {
        'ResNet-50 (mmdet)': lambda: ResNet(50),
        'ACmix-R50 fused': lambda: ACmixResNet(50, attn_impl='fused'),
        'ACmix-R50 reference': lambda: ACmixResNet(50,
                                                   attn_impl='reference'),
        'Swin-T (mmdet)': lambda: SwinTransformer(**swin),
        'ACmix-Swin-T fused': lambda: ACmixSwinTransformer(
            attn_impl='fused', **swin),
        'ACmix-Swin-T reference': lambda: ACmixSwinTransformer(
            attn_impl='reference', **swin),
    }


def train_step(model: torch.nn.Module, images: Tensor,
               amp_dtype: torch.dtype) -> Callable[[], None]:

    def step() -> None:
        with torch.autocast(images.device.type, dtype=amp_dtype,
                            enabled=amp_dtype != torch.float32):
            outs = model(images)
        sum(o.float().mean() for o in outs).backward()

    return step


def benchmark_backbones(dtype: torch.dtype, device: torch.device,
                        repeats: int, quick: bool) -> List[dict]:
    rows = []
    shape = (2, 3, 64, 96) if quick else (2, 3, 800, 1333)
    images = torch.randn(*shape, device=device)
    for name, build in build_backbones(quick).items():
        if name == 'ACmix-R50 fused' and device.type != 'cuda':
            continue  # the Triton kernels need CUDA
        model = build().to(device)
        model.train()  # mmdet's ResNet.train returns None
        row = dict(model=name, input='x'.join(map(str, shape)))
        try:
            result = measure(train_step(model, images, dtype), device,
                             repeats)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
            if 'out of memory' not in str(error).lower():
                raise
            row.update(error='out of memory')
        else:
            row.update(images_per_s=shape[0] / result['seconds'],
                       peak_mib=result['peak_bytes'] / 2**20)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    rows.extend(benchmark_mask_rcnn(dtype, device, repeats, quick))
    return rows


def benchmark_mask_rcnn(dtype: torch.dtype, device: torch.device,
                        repeats: int, quick: bool) -> List[dict]:
    """Peak memory of one Mask R-CNN train step, 2 images, with AMP."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.optim import build_optim_wrapper

    from acmix_mm.testing import build_model, synthetic_batch
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    configs = {
        'Mask R-CNN R-50 (mmdet)': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        'Mask R-CNN ACmix-R50': osp.join(
            repo, 'configs/acmix_resnet/mask-rcnn_acmix-r50_fpn_1x_coco.py'),
    }
    size = (64, 96) if quick else (800, 1333)
    rows = []
    for name, path in configs.items():
        cfg = get_config(path) if '::' in path else Config.fromfile(path)
        cfg.model.backbone.init_cfg = None
        model = build_model(cfg).to(device)
        optim = dict(cfg.optim_wrapper)
        if device.type == 'cuda':
            optim.update(type='AmpOptimWrapper', dtype=dtype)
        wrapper = build_optim_wrapper(model, optim)
        batch = synthetic_batch('mmdet', 2, size)
        row = dict(model=name, input=f'2x3x{size[0]}x{size[1]}')
        try:
            result = measure(lambda: model.train_step(batch, wrapper),
                             device, max(1, repeats // 4))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
            if 'out of memory' not in str(error).lower():
                raise
            row.update(error='out of memory')
        else:
            row.update(images_per_s=2 / result['seconds'],
                       peak_mib=result['peak_bytes'] / 2**20)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, wrapper
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return rows


def markdown(op_rows: List[dict], backbone_rows: List[dict]) -> str:
    lines = []
    if op_rows:
        lines += [
            '| shape | impl | fwd ms | fwd+bwd ms | peak MiB | fwd GB/s | '
            'roofline |', '|---|---|---|---|---|---|---|'
        ]
        for r in op_rows:
            if 'error' in r:
                lines.append(f'| {r["shape"]} | {r["impl"]} | {r["error"]} '
                             f'| | | | |')
                continue
            lines.append(
                f'| {r["shape"]} | {r["impl"]} | {r["forward_ms"]:.3f} | '
                f'{r["forward_backward_ms"]:.3f} | {r["peak_mib"]:.0f} | '
                f'{r["forward_gbps"]:.0f} | {r["roofline_fraction"]:.0%} |')
    if backbone_rows:
        lines += ['', '| model | input | images/s | peak MiB |',
                  '|---|---|---|---|']
        for r in backbone_rows:
            if 'error' in r:
                lines.append(f'| {r["model"]} | {r["input"]} | '
                             f'{r["error"]} | |')
            else:
                lines.append(f'| {r["model"]} | {r["input"]} | '
                             f'{r["images_per_s"]:.2f} | '
                             f'{r["peak_mib"]:.0f} |')
    return '\n'.join(lines)


def plot(op_rows: List[dict], backbone_rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(14, 5))
    shapes = list(dict.fromkeys(r['shape'] for r in op_rows))
    impls = list(dict.fromkeys(r['impl'] for r in op_rows))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        values = [next((r.get('forward_backward_ms', float('nan'))
                        for r in op_rows
                        if r['shape'] == s and r['impl'] == impl),
                       float('nan')) for s in shapes]
        axes[0].bar([x + i * width for x in range(len(shapes))], values,
                    width, label=impl)
    axes[0].set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))])
    axes[0].set_xticklabels(shapes, rotation=45, ha='right')
    axes[0].set_yscale('log')
    axes[0].set_ylabel('forward+backward ms (log)')
    axes[0].set_title('ACmix local attention (ResNet-50 layer shapes)')
    axes[0].legend()
    names = [r['model'] for r in backbone_rows]
    axes[1].barh(names, [r.get('images_per_s', 0) for r in backbone_rows])
    axes[1].set_xlabel('train images/s (AMP)')
    axes[1].set_title('Backbones and Mask R-CNN, 2x3x800x1333')
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type != 'cuda' and not args.quick:
        raise SystemExit('error: the benchmark needs a CUDA GPU (or --quick '
                         'to check the script on the CPU)')
    dtype = getattr(torch, args.dtype)
    if device.type == 'cpu':
        dtype = torch.float32
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' \
        else 'cpu'
    bandwidth = args.peak_bandwidth or next(
        (bw for key, bw in PEAK_BANDWIDTH.items() if key in name), 1e12)
    repeats = 1 if args.quick else args.repeats
    shapes = QUICK_SHAPES if args.quick else IMAGENET_SHAPES + COCO_SHAPES
    op_rows = benchmark_ops(shapes, dtype, device, repeats, bandwidth) \
        if 'op' in args.sections else []
    backbone_rows = benchmark_backbones(dtype, device, repeats, args.quick) \
        if 'backbone' in args.sections else []

    os.makedirs(args.out_dir, exist_ok=True)
    result = dict(device=name, dtype=str(dtype), torch=torch.__version__,
                  peak_bandwidth=bandwidth, ops=op_rows,
                  backbones=backbone_rows)
    with open(osp.join(args.out_dir, 'benchmark_acmix.json'), 'w') as file:
        json.dump(result, file, indent=2)
    plot(op_rows, backbone_rows,
         osp.join(args.out_dir, 'benchmark_acmix.png'))
    print(f'\n{name}, {dtype}\n')
    print(markdown(op_rows, backbone_rows))
    print(f'\nwritten to {args.out_dir}/benchmark_acmix.json and .png')


if __name__ == '__main__':
    main()
