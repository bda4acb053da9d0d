"""Benchmark ACmix: the local-attention op and whole models, on a GPU.

Section ``op``: ACmix's local attention (4 heads, 7x7 window) at the shapes
of ACmix-ResNet-50's ACmix layers for ImageNet 224 (batch 64) and COCO
800x1333 (batch 2), by four implementations:

- ``triton``: acmix_mm's Triton kernels
  (``acmix_mm.ops.triton.local_attention``);
- ``reference``: acmix_mm's PyTorch reference (``local_attention_reference``);
- ``unfold``: the formulation of the original ACmix code, written here:
  reflection padding, ``F.unfold`` of k, v and the positional term, float32
  softmax over the window (it takes the raw keys and the positional term, the
  others their difference; the results are equal);
- ``flex``: acmix_mm's FlexAttention backend (``acmix_mm.ops.flex``,
  compiled): a block mask of the window and a score modifier adding
  log(reflection multiplicity).

Each (implementation, shape) row holds the median forward and
forward+backward time, the peak memory of one call (above what was allocated
before), the forward GB/s and its fraction of the HBM roofline (q, k, v read
and the output written once), and the largest absolute error of the output
(``max_error``) and of the gradients of q, k, v for a fixed random output
gradient (``max_grad_error``) against the reference computed in float32.
Fused rows add the CUDA time of each kernel (forward, dQ, dK/dV; from
torch.profiler) and the (num_warps, num_stages) each kernel ran with. An
error (out of memory, unsupported inputs, ...) is recorded in its row as
``error`` and the run goes on.

Section ``backbone``: train-step (forward, backward) images/s and peak
memory of ACmix-R50 (each local-attention backend) and ACmix-Swin-T (each
window-attention backend) beside mmdet's ResNet-50 and Swin-T, 2x3x800x1333
images (``--image-size``), AMP; a backend that cannot run records why. This
section also runs on the CPU (float32)::

    python tools/analysis_tools/benchmark_acmix.py --sections backbone \\
        --image-size 224 224 --repeats 5 --out-dir work_dirs/bench_cpu
 Section ``mask_rcnn``: the same for one
Mask R-CNN training step of ACmix-R50 vs ResNet-50 (needs mmcv's compiled
ops).

Timing: on CUDA, CUDA events around each call. Before each call a 256 MiB
buffer is overwritten (this empties the L2 cache) as many times as it takes
the host to queue one call (measured on a warm-up call), so the GPU reaches
the call only when all its kernels are queued: the time is the GPU's, not
the launch overhead's, also for small shapes. On the CPU, perf_counter.
Medians over ``--repeats`` calls after warm-up (which compiles and
autotunes).

Writes ``<out-dir>/benchmark_acmix.json`` (device, torch, Triton and CUDA
versions, dtype, peak bandwidth, the rows of each section) and
``benchmark_acmix.md`` (the tables, also printed at the end), both again
after every row so that an interrupted run keeps its rows, and at the end
``benchmark_acmix.png`` (needs matplotlib). ``--merge`` keeps the rows of
the sections not run from the out-dir's JSON, so sections can run one at a
time into one set of files.

Usage:
    python tools/analysis_tools/benchmark_acmix.py --out-dir work_dirs/bench
    python tools/analysis_tools/benchmark_acmix.py --sections op \\
        --impls triton flex --shapes coco in224/stage1
    python tools/analysis_tools/benchmark_acmix.py --quick

``--quick`` runs tiny shapes and inputs with few repeats to check the script,
also on the CPU; there the triton rows record that the kernels need CUDA
tensors, and FlexAttention runs uncompiled (compiling takes minutes there)
and forward only (torch has no CPU backward for it). The ``op`` section
needs only torch (and Triton for ``triton``); the others need mmdet (and
mmcv) as well. ``ACMIX_TUNING_CONFIG='4,2'`` pins the fused kernels' tuning
config.
"""
import argparse
import functools
import gc
import json
import math
import os
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
try:
    import acmix_mm  # noqa: F401
except ImportError:  # not installed: use the checkout this script is in
    sys.path.insert(0, REPO)
from acmix_mm.ops import local_attention_reference  # noqa: E402
from acmix_mm.ops import BACKENDS, LOCAL_ATTENTION, WINDOW_ATTENTION  # noqa
from acmix_mm.ops.flex import flex_local_attention  # noqa: E402


class OpShape(NamedTuple):
    """Input of an ACmix layer's attention: B x C x H x W, query stride."""
    name: str
    batch: int
    channels: int
    height: int
    width: int
    stride: int


# ACmix-ResNet-50's ACmix layers (stage2.0: the strided first block).
IMAGENET_SHAPES = [
    OpShape('in224/stage1', 64, 64, 56, 56, 1),
    OpShape('in224/stage2.0', 64, 128, 56, 56, 2),
    OpShape('in224/stage2', 64, 128, 28, 28, 1),
    OpShape('in224/stage3', 64, 256, 14, 14, 1),
    OpShape('in224/stage4', 64, 512, 7, 7, 1),
]
COCO_SHAPES = [
    OpShape('coco/stage1', 2, 64, 200, 334, 1),
    OpShape('coco/stage2.0', 2, 128, 200, 334, 2),
    OpShape('coco/stage2', 2, 128, 100, 167, 1),
    OpShape('coco/stage3', 2, 256, 50, 84, 1),
    OpShape('coco/stage4', 2, 512, 25, 42, 1),
]
# Head dims 8 and 16; stride 2 with an odd side; a map smaller than the
# window (reflection padding undefined: the unfold row records its error).
QUICK_SHAPES = [
    OpShape('quick/s1', 2, 32, 9, 11, 1),
    OpShape('quick/s2', 1, 64, 8, 7, 2),
    OpShape('quick/tiny', 1, 32, 3, 5, 1),
]
HEADS, KERNEL = 4, 7
IMPLS = ('triton', 'reference', 'unfold', 'flex')
SECTIONS = ('op', 'backbone', 'mask_rcnn')
IMAGE_SIZE, QUICK_IMAGE_SIZE = (800, 1333), (64, 96)
# Peak HBM bandwidth (bytes/s) by device name (first match), for the roofline.
PEAK_BANDWIDTH = (('H100 PCIe', 2.0e12), ('H100', 3.35e12), ('H200', 4.8e12),
                  ('A100', 2.0e12))
# CUDA kernel names of the fused op, by last_tuning_configs() key.
FUSED_KERNELS = {
    'forward': '_forward_kernel',
    'slot_forward': '_slot_forward_kernel',
    'grad_query': '_grad_query_kernel',
    'slot_grad_query': '_slot_grad_query_kernel',
    'grad_key_value': '_grad_key_value_kernel',
    'slot_grad_key_value': '_slot_grad_key_value_kernel',
    'slot_grad_key_value_edge': '_slot_grad_key_value_edge_kernel',
}
PROFILE_ITERATIONS = 5
# Called with each finished row of a section.
Record = Callable[[dict], None]
# Timing on CUDA: the buffer overwritten before each call, and the most
# times it is overwritten to give the host a head start.
L2_FLUSH_BYTES = 256 * 2**20
MAX_FLUSHES = 200


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description='Benchmark the ACmix local-attention op and models.')
    parser.add_argument('--out-dir', default='work_dirs/benchmark_acmix')
    parser.add_argument(
        '--dtype',
        choices=['float16', 'bfloat16', 'float32'],
        help='op dtype and AMP dtype (default: bfloat16 on '
        'CUDA, float32 on the CPU)')
    parser.add_argument(
        '--repeats',
        type=int,
        default=20,
        help='timed calls per measurement (median)')
    parser.add_argument(
        '--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        '--impls',
        nargs='+',
        choices=IMPLS,
        default=list(IMPLS),
        help='op implementations')
    parser.add_argument(
        '--shapes',
        nargs='+',
        help='op shapes by name (coco/stage1) or prefix '
        '(coco); default: all')
    parser.add_argument(
        '--peak-bandwidth',
        type=float,
        help='bytes/s (default: from the device name)')
    parser.add_argument(
        '--image-size',
        nargs=2,
        type=int,
        metavar=('H', 'W'),
        help='backbone and Mask R-CNN input (default: '
        f'{IMAGE_SIZE[0]} {IMAGE_SIZE[1]})')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='tiny shapes, few repeats: checks the script')
    parser.add_argument(
        '--merge',
        action='store_true',
        help='keep the rows of the sections not run now '
        'from <out-dir>/benchmark_acmix.json (same device '
        'and dtype)')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    return args


def select_shapes(shapes: Sequence[OpShape],
                  patterns: Optional[Sequence[str]]) -> List[OpShape]:
    """The shapes named by ``patterns`` (a name or a prefix such as 'coco');
    all for None. Exits with the choices if a pattern matches none."""
    if not patterns:
        return list(shapes)

    def matches(shape: OpShape, pattern: str) -> bool:
        return (shape.name == pattern
                or shape.name.startswith(pattern.rstrip('/') + '/'))

    unknown = [p for p in patterns if not any(matches(s, p) for s in shapes)]
    if unknown:
        names = ', '.join(s.name for s in shapes)
        raise SystemExit(f'error: --shapes {" ".join(unknown)} matches none '
                         f'of: {names}')
    return [s for s in shapes if any(matches(s, p) for p in patterns)]


# ---------------------------------------------------------------- measuring


def describe(error: BaseException) -> str:
    """'out of memory', or 'ExceptionType: first line of the message'."""
    message = str(error).strip()
    if (isinstance(error, torch.cuda.OutOfMemoryError)
            or 'out of memory' in message.lower()):
        return 'out of memory'
    first_line = message.splitlines()[0] if message else ''
    return f'{type(error).__name__}: {first_line}'.rstrip(': ')


def free_memory(device: torch.device) -> None:
    """Collect garbage (e.g. tensors a caught error's frames held) and
    return cached CUDA memory."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def median_ms(fn: Callable[[], object], device: torch.device,
              repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls after warm-up
    (see the module docstring)."""
    fn()  # compiles, autotunes
    if device.type != 'cuda':
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
        return statistics.median(times) * 1e3
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    torch.cuda.synchronize(device)
    begin = time.perf_counter()
    fn()
    host_ms = (time.perf_counter() - begin) * 1e3
    flush_ms = max(cuda_ms(flush.zero_, device), 1e-3)
    flushes = min(MAX_FLUSHES, math.ceil(host_ms / flush_ms))
    events = [(torch.cuda.Event(enable_timing=True),
               torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    torch.cuda.synchronize(device)
    for start, end in events:
        for _ in range(flushes):
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def cuda_ms(fn: Callable[[], object], device: torch.device) -> float:
    """CUDA milliseconds of one call of ``fn`` (which must not wait for the
    GPU)."""
    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end)


def peak_mib(fn: Callable[[], object],
             device: torch.device) -> Optional[float]:
    """Peak CUDA memory of one call of ``fn`` above what was allocated
    before, in MiB (None on the CPU)."""
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def fused_kernel_ms(step: Callable[[], object],
                    iterations: int) -> Dict[str, Optional[float]]:
    """Mean CUDA milliseconds per call of each fused kernel over
    ``iterations`` calls of ``step`` (None: the kernel did not run)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA
                             ]) as profiler:
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
    total_us = dict.fromkeys(FUSED_KERNELS, 0.0)
    for event in profiler.events():
        if event.device_type != DeviceType.CUDA:
            continue
        # The longest symbol in the event's name: '_forward_kernel' is
        # also part of '_slot_forward_kernel'.
        matches = [n for n, s in FUSED_KERNELS.items() if s in event.name]
        if matches:
            name = max(matches, key=lambda n: len(FUSED_KERNELS[n]))
            total_us[name] += event.time_range.elapsed_us()
    return {
        name: us / iterations / 1e3 if us else None
        for name, us in total_us.items()
    }


# ------------------------------------------------------ op implementations


def local_attention_unfold(q: Tensor, k: Tensor, v: Tensor, pe: Tensor,
                           kernel_size: int, stride: int,
                           scale: float) -> Tensor:
    """The local attention as the original ACmix code formulates it.

    Reflection-pads and unfolds k, v and the positional term into
    ``kernel_size ** 2`` shifted copies; logits q . (k + pe_query - pe_key),
    float32 softmax over the window, weighted sum of the unfolded v.
    Reflection padding needs every side > kernel_size // 2.

    Args:
        q, k, v: (B, heads, D, H, W); k without the positional term.
        pe: (1, D, H, W) positional term, shared by batch items and heads.
        kernel_size, stride, scale: as ``local_attention_reference``.

    Returns:
        Tensor: (B, heads, D, ceil(H / stride), ceil(W / stride)).
    """
    batch, heads, dim, height, width = q.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    pad, window = kernel_size // 2, kernel_size**2

    def unfold(maps: Tensor) -> Tensor:
        """(N, D, H, W) -> (N, D, window, out_h * out_w) reflected windows."""
        padded = F.pad(maps, (pad, pad, pad, pad), mode='reflect')
        columns = F.unfold(padded, kernel_size, stride=stride)
        return columns.view(maps.shape[0], dim, window, out_h * out_w)

    def queries(maps: Tensor) -> Tensor:
        """(N, D, H, W) -> (N, D, 1, out_h * out_w) at the query pixels."""
        return maps[..., ::stride, ::stride].reshape(maps.shape[0], dim, 1,
                                                     out_h * out_w)

    k_window = unfold(k.reshape(batch * heads, dim, height, width))
    v_window = unfold(v.reshape(batch * heads, dim, height, width))
    q_scaled = queries(q.reshape(batch * heads, dim, height, width) * scale)
    logits = (q_scaled * (k_window + queries(pe) - unfold(pe))).sum(1)
    weights = logits.softmax(1, dtype=torch.float32).to(v.dtype)
    out = (weights.unsqueeze(1) * v_window).sum(2)
    return out.view(batch, heads, dim, out_h, out_w)


# --------------------------------------------------------------- op section


class OpInputs(NamedTuple):
    """One shape's inputs in the benchmark dtype and the float32 truth."""
    q: Tensor  # (B, heads, D, H, W); q, k, v, k_shifted require grad
    k: Tensor  # raw keys (unfold)
    v: Tensor
    pe: Tensor  # (1, D, H, W) positional term
    k_shifted: Tensor  # k - pe: the keys of the other implementations
    grad_out: Tensor
    out_truth: Tensor
    grads_truth: Tuple[Tensor, ...]  # of q, k (= of k - pe), v
    stride: int
    scale: float


def make_inputs(shape: OpShape, dtype: torch.dtype,
                device: torch.device) -> OpInputs:
    """Seeded random inputs in ``dtype``, and the truth: the reference in
    float32 on those values (k - pe taken in float32)."""
    head_dim = shape.channels // HEADS
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(
            shape.batch,
            HEADS,
            head_dim,
            shape.height,
            shape.width,
            device=device).to(dtype) for _ in range(3))
    pe = torch.randn(
        1, head_dim, shape.height, shape.width, device=device).to(dtype)
    leaves = [
        t.detach().float().requires_grad_()
        for t in (q, k.float() - pe.float()[:, None], v)
    ]
    scale = head_dim**-0.5
    out_truth = local_attention_reference(*leaves, KERNEL, shape.stride, scale)
    grad_out = torch.randn_like(out_truth).to(dtype)
    grads_truth = torch.autograd.grad(out_truth, leaves, grad_out.float())
    k_shifted = leaves[1].detach().to(dtype)
    return OpInputs(q.requires_grad_(),
                    k.requires_grad_(), v.requires_grad_(), pe,
                    k_shifted.requires_grad_(), grad_out, out_truth.detach(),
                    grads_truth, shape.stride, scale)


def prepare(
        impl: str, inputs: OpInputs, device: torch.device
) -> Tuple[Callable[[], Tensor], Tuple[Tensor, ...]]:
    """The forward call of ``impl`` on ``inputs`` and its differentiable
    inputs (q, k, v: raw keys for 'unfold', k - pe for the others)."""
    q, v, stride, scale = inputs.q, inputs.v, inputs.stride, inputs.scale
    if impl == 'unfold':
        k, pe = inputs.k, inputs.pe
        return (lambda: local_attention_unfold(q, k, v, pe, KERNEL, stride,
                                               scale)), (q, k, v)
    k = inputs.k_shifted
    if impl == 'flex':
        flex = flex_local_attention(
            *q.shape[-2:],
            KERNEL,
            stride,
            device,
            compile=device.type == 'cuda')
        return (lambda: flex(q, k, v, scale)), (q, k, v)
    if impl == 'triton':
        from acmix_mm.ops.triton import local_attention as attention
    else:
        attention = local_attention_reference
    return (lambda: attention(q, k, v, KERNEL, stride, scale)), (q, k, v)


def max_abs_error(value: Tensor, truth: Tensor) -> float:
    """max |value - truth| in float32; an error if the shapes differ."""
    if value.shape != truth.shape:
        raise ValueError(f'result shape {tuple(value.shape)}, expected '
                         f'{tuple(truth.shape)}')
    return (value.float() - truth).abs().max().item()


def roofline_bytes(batch: int, channels: int, height: int, width: int,
                   stride: int, element_size: int) -> int:
    """Least bytes a forward moves: q (at the query pixels), k, v read and
    the output written once, plus one float32 statistic per query and
    head."""
    out_pixels = math.ceil(height / stride) * math.ceil(width / stride)
    return (element_size * batch * channels *
            (2 * out_pixels + 2 * height * width) +
            4 * batch * HEADS * out_pixels)


def op_row(shape: OpShape, impl: str, dtype: torch.dtype) -> dict:
    """The description part of an op row."""
    return dict(
        shape=shape.name,
        impl=impl,
        batch=shape.batch,
        channels=shape.channels,
        heads=HEADS,
        head_dim=shape.channels // HEADS,
        height=shape.height,
        width=shape.width,
        stride=shape.stride,
        dtype=str(dtype).replace('torch.', ''))


def benchmark_op(impl: str, shape: OpShape, inputs: OpInputs,
                 device: torch.device, repeats: int,
                 bandwidth: Optional[float]) -> dict:
    """One op row: errors, times and memory of ``impl`` at ``shape``, as far
    as it got before an error."""
    row = op_row(shape, impl, inputs.q.dtype)
    if impl == 'flex':
        row['compiled'] = device.type == 'cuda'
    try:
        forward, leaves = prepare(impl, inputs, device)
        with torch.no_grad():
            row['max_error'] = max_abs_error(forward(), inputs.out_truth)
            row['forward_ms'] = median_ms(forward, device, repeats)
            row['forward_peak_mib'] = peak_mib(forward, device)

        def step() -> Tuple[Tensor, ...]:
            return torch.autograd.grad(forward(), leaves, inputs.grad_out)

        row['max_grad_error'] = max(
            map(max_abs_error, step(), inputs.grads_truth))
        row['forward_backward_ms'] = median_ms(step, device, repeats)
        row['peak_mib'] = peak_mib(step, device)
        if impl == 'triton' and device.type == 'cuda':
            from acmix_mm.ops.triton_kernels import last_tuning_configs
            row['tuning_configs'] = last_tuning_configs()
            row['kernel_ms'] = fused_kernel_ms(
                step, min(repeats, PROFILE_ITERATIONS))
    except Exception as error:
        row['error'] = describe(error)
    free_memory(device)
    if 'forward_ms' in row:
        moved = roofline_bytes(shape.batch, shape.channels, shape.height,
                               shape.width, shape.stride,
                               inputs.q.element_size())
        rate = moved / row['forward_ms'] * 1e3  # bytes/s
        row['forward_gbps'] = rate / 1e9
        row['roofline_fraction'] = rate / bandwidth if bandwidth else None
    return row


def benchmark_ops(shapes: Sequence[OpShape], impls: Sequence[str],
                  dtype: torch.dtype, device: torch.device, repeats: int,
                  bandwidth: Optional[float], record: Record) -> None:
    """Record the row of every (shape, implementation)."""
    for shape in shapes:
        if 'flex' in impls:  # recompiles per shape never hit the limit
            import torch._dynamo
            torch._dynamo.reset()
        try:
            inputs = make_inputs(shape, dtype, device)
        except Exception as error:
            inputs, failure = None, f'inputs: {describe(error)}'
        for impl in impls:
            if inputs is None:
                row = dict(op_row(shape, impl, dtype), error=failure)
            else:
                row = benchmark_op(impl, shape, inputs, device, repeats,
                                   bandwidth)
            record(row)
        del inputs
        free_memory(device)


# ------------------------------------------------ backbone and Mask R-CNN


def measure_train_step(row: dict, make_step: Callable[[], Callable[[],
                                                                   object]],
                       images: int, device: torch.device,
                       repeats: int) -> dict:
    """Fill ``row`` with images/s, step ms and peak MiB of the training step
    ``make_step`` builds, or the error of building or running it."""
    try:
        step = make_step()
        row['step_ms'] = median_ms(step, device, repeats)
        row['images_per_s'] = images / row['step_ms'] * 1e3
        row['peak_mib'] = peak_mib(step, device)
    except Exception as error:
        row['error'] = describe(error)
    free_memory(device)
    return row


def backbone_builders(quick: bool) -> Dict[str, Callable[[], torch.nn.Module]]:
    """Model name -> builder: mmdet's ResNet-50 and Swin-T, and the ACmix
    backbones with each backend of their attention (one Swin block per
    stage if ``quick``)."""
    swin = dict(depths=(1, 1, 1, 1)) if quick else {}

    def resnet() -> torch.nn.Module:
        from mmdet.models.backbones import ResNet
        return ResNet(50)

    def swin_t() -> torch.nn.Module:
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(**swin)

    def acmix_resnet(attn_impl: str) -> torch.nn.Module:
        from acmix_mm.models import ACmixResNet
        return ACmixResNet(50, attn_impl=attn_impl)

    def acmix_swin(attn_impl: str) -> torch.nn.Module:
        from acmix_mm.models import ACmixSwinTransformer
        return ACmixSwinTransformer(attn_impl=attn_impl, **swin)

    return {
        'ResNet-50 (mmdet)': resnet,
        **{
            f'ACmix-R50 {impl}': functools.partial(acmix_resnet, impl)
            for impl in BACKENDS[LOCAL_ATTENTION]
        },
        'Swin-T (mmdet)': swin_t,
        **{
            f'ACmix-Swin-T {impl}': functools.partial(acmix_swin, impl)
            for impl in BACKENDS[WINDOW_ATTENTION]
        },
    }


def benchmark_backbones(dtype: torch.dtype, device: torch.device, repeats: int,
                        quick: bool, size: Tuple[int,
                                                 int], record: Record) -> None:
    """Record the train-step row (forward, backward of the mean of the
    outputs) of each backbone on 2 H x W images, with autocast to
    ``dtype``."""
    images = torch.randn(2, 3, *size, device=device)

    def make_step(build: Callable[[], torch.nn.Module]) -> Callable[[], None]:
        model = build().to(device)
        model.train()

        def step() -> None:
            with torch.autocast(
                    device.type, dtype=dtype, enabled=dtype != torch.float32):
                outs = model(images)
            sum(out.float().mean() for out in outs).backward()

        return step

    for name, build in backbone_builders(quick).items():
        record(
            measure_train_step(
                dict(model=name, input=f'2x3x{size[0]}x{size[1]}'),
                functools.partial(make_step, build), 2, device, repeats))


def benchmark_mask_rcnn(dtype: torch.dtype, device: torch.device, repeats: int,
                        size: Tuple[int, int], record: Record) -> None:
    """Record the rows of one Mask R-CNN training step (2 images, AMP on
    CUDA) with mmdet's ResNet-50 and with ACmix-R50 (attn_impl 'auto')."""
    configs = {
        'Mask R-CNN R-50 (mmdet)':
        'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        'Mask R-CNN ACmix-R50':
        osp.join(REPO,
                 'configs/acmix_resnet/mask-rcnn_acmix-r50_fpn_1x_coco.py'),
    }

    def make_step(path: str) -> Callable[[], object]:
        from mmengine.config import Config
        from mmengine.hub import get_config
        from mmengine.optim import build_optim_wrapper

        from acmix_mm.testing import build_model, synthetic_batch
        cfg = get_config(path) if '::' in path else Config.fromfile(path)
        cfg.model.backbone.init_cfg = None
        model = build_model(cfg).to(device)
        optim = dict(cfg.optim_wrapper)
        if device.type == 'cuda' and dtype != torch.float32:
            optim.update(type='AmpOptimWrapper', dtype=dtype)
        wrapper = build_optim_wrapper(model, optim)
        batch = synthetic_batch('mmdet', 2, size)
        return lambda: model.train_step(batch, wrapper)

    for name, path in configs.items():
        record(
            measure_train_step(
                dict(model=name, input=f'2x3x{size[0]}x{size[1]}'),
                functools.partial(make_step, path), 2, device,
                max(1, repeats // 4)))


# ------------------------------------------------------------------ output


def number(value: Optional[float], spec: str) -> str:
    """``value`` formatted, '-' if missing."""
    return '-' if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The Markdown tables of ``result`` (the JSON document)."""
    lines = [
        f'{result["device"]}, torch {result["torch"]}, Triton '
        f'{result["triton"]}, CUDA {result["cuda"]}, {result["dtype"]}'
    ]
    if result['op']:
        lines += [
            '', '### Local attention op', '',
            '| shape | impl | fwd ms | fwd+bwd ms | peak MiB | fwd GB/s '
            '| roofline | max err | max grad err | error |',
            '|---|---|---|---|---|---|---|---|---|---|'
        ]
        for r in result['op']:
            lines.append(f'| {r["shape"]} | {r["impl"]} | '
                         f'{number(r.get("forward_ms"), ".3f")} | '
                         f'{number(r.get("forward_backward_ms"), ".3f")} | '
                         f'{number(r.get("peak_mib"), ".0f")} | '
                         f'{number(r.get("forward_gbps"), ".0f")} | '
                         f'{number(r.get("roofline_fraction"), ".0%")} | '
                         f'{number(r.get("max_error"), ".1e")} | '
                         f'{number(r.get("max_grad_error"), ".1e")} | '
                         f'{r.get("error", "")} |')
    fused = [r for r in result['op'] if 'kernel_ms' in r]
    if fused:
        lines += [
            '', '### Fused kernels (CUDA ms per call)', '',
            '| shape | ' + ' | '.join(f'{name} ms' for name in FUSED_KERNELS) +
            ' | (num_warps, num_stages) of each |',
            '|---' * (len(FUSED_KERNELS) + 2) + '|'
        ]
        for r in fused:
            times = [number(r['kernel_ms'][k], '.3f') for k in FUSED_KERNELS]
            configs = ' / '.join(
                str(tuple(c)) if c else '-'
                for c in map(r['tuning_configs'].get, FUSED_KERNELS))
            lines.append(f'| {r["shape"]} | {" | ".join(times)} | '
                         f'{configs} |')
    for section, title in (('backbone', 'Backbone train step'),
                           ('mask_rcnn', 'Mask R-CNN train step')):
        if result[section]:
            lines += [
                '', f'### {title}', '',
                '| model | input | images/s | step ms | peak MiB | error |',
                '|---|---|---|---|---|---|'
            ]
            lines += [
                f'| {r["model"]} | {r["input"]} | '
                f'{number(r.get("images_per_s"), ".2f")} | '
                f'{number(r.get("step_ms"), ".1f")} | '
                f'{number(r.get("peak_mib"), ".0f")} | '
                f'{r.get("error", "")} |' for r in result[section]
            ]
    return '\n'.join(lines)


def plot(result: dict, path: str) -> bool:
    """Chart: op forward+backward time and peak memory by shape and
    implementation, model images/s and peak memory; False if matplotlib is
    missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    op_rows = result['op']
    model_rows = result['backbone'] + result['mask_rcnn']

    def panels(rows: List[dict], first: Tuple[str, str]) -> list:
        """(key, label) of the panels of ``rows``: ``first``, and peak
        memory where measured."""
        if not rows:
            return []
        peak = any(r.get('peak_mib') for r in rows)
        return [first] + ([('peak_mib', 'peak MiB')] if peak else [])

    op_panels = panels(op_rows, ('forward_backward_ms', 'forward+backward ms'))
    model_panels = panels(model_rows, ('images_per_s', 'train images/s'))
    count = len(op_panels) + len(model_panels)
    columns, rows = min(count, 2), math.ceil(count / 2)
    figure, grid = plt.subplots(
        rows, columns, figsize=(8 * columns, 5.5 * rows), squeeze=False)
    axes = iter(grid.flat)
    shapes = list(dict.fromkeys(r['shape'] for r in op_rows))
    impls = list(dict.fromkeys(r['impl'] for r in op_rows))
    for key, label in op_panels:
        axis, width = next(axes), 0.8 / len(impls)
        for i, impl in enumerate(impls):
            values = {
                r['shape']: r.get(key)
                for r in op_rows if r['impl'] == impl
            }
            axis.bar([x + i * width for x in range(len(shapes))],
                     [values.get(s) or float('nan') for s in shapes],
                     width,
                     label=impl)
        axis.set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))])
        axis.set_xticklabels(shapes, rotation=45, ha='right')
        axis.set_yscale('log')
        axis.set_ylabel(f'{label} (log)')
        axis.set_title(f'ACmix local attention: {label}')
        axis.legend()
    names = [f'{r["model"]} {r["input"]}' for r in model_rows]
    for key, label in model_panels:
        axis = next(axes)
        axis.barh(names, [r.get(key) or 0 for r in model_rows])
        axis.set_xlabel(label)
        axis.set_title(f'train step: {label}')
    for axis in axes:  # an odd panel count leaves one empty
        axis.set_visible(False)
    figure.suptitle(f'{result["device"]}, {result["dtype"]}')
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """Device, versions and settings for the JSON document."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(
        device=torch.cuda.get_device_name(device)
        if device.type == 'cuda' else 'cpu',
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        dtype=str(dtype).replace('torch.', ''),
        tuning_config=os.environ.get('ACMIX_TUNING_CONFIG') or None)


def save(result: dict, stem: str) -> None:
    """Write ``<stem>.json`` and ``<stem>.md``."""
    with open(f'{stem}.json', 'w') as file:
        json.dump(result, file, indent=2)
    with open(f'{stem}.md', 'w') as file:
        file.write(markdown(result) + '\n')


def merge_previous(result: dict, stem: str, sections: Sequence[str]) -> None:
    """Copy into ``result`` the rows of the sections not in ``sections``
    from an earlier ``<stem>.json`` of the same device, dtype and mode."""
    if not osp.exists(f'{stem}.json'):
        return
    with open(f'{stem}.json') as file:
        previous = json.load(file)
    for key in ('device', 'dtype', 'quick'):
        if previous.get(key) != result[key]:
            raise SystemExit(
                f'error: --merge: {stem}.json has {key} '
                f'{previous.get(key)!r}, this run {result[key]!r}; use '
                'another --out-dir')
    for section in SECTIONS:
        if section not in sections:
            result[section] = previous.get(section, [])


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device('cuda', torch.cuda.current_device()) \
        if torch.cuda.is_available() else torch.device('cpu')
    if device.type != 'cuda' and not args.quick \
            and set(args.sections) != {'backbone'}:
        raise SystemExit('error: the op and mask_rcnn sections need a CUDA '
                         'GPU (or --quick to check the script on the CPU)')
    size = tuple(
        args.image_size or (QUICK_IMAGE_SIZE if args.quick else IMAGE_SIZE))
    shapes = select_shapes(
        QUICK_SHAPES if args.quick else IMAGENET_SHAPES + COCO_SHAPES,
        args.shapes)
    dtype = getattr(
        torch, args.dtype
        or ('bfloat16' if device.type == 'cuda' else 'float32'))
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    result = environment(device, dtype)
    bandwidth = args.peak_bandwidth or next(
        (bw for key, bw in PEAK_BANDWIDTH if key in result['device']), None)
    result.update(
        peak_bandwidth=bandwidth,
        quick=args.quick,
        repeats=repeats,
        op=[],
        backbone=[],
        mask_rcnn=[])
    os.makedirs(args.out_dir, exist_ok=True)
    stem = osp.join(args.out_dir, 'benchmark_acmix')
    if args.merge:
        merge_previous(result, stem, args.sections)

    def record(section: str, row: dict) -> None:
        """Add ``row`` to ``section``, print it and rewrite the JSON and
        Markdown files, so that an interrupted run keeps its rows."""
        result[section].append(row)
        print(json.dumps(row), flush=True)
        save(result, stem)

    save(result, stem)
    runs = {
        'op':
        functools.partial(benchmark_ops, shapes, args.impls, dtype, device,
                          repeats, bandwidth),
        'backbone':
        functools.partial(benchmark_backbones, dtype, device, repeats,
                          args.quick, size),
        'mask_rcnn':
        functools.partial(benchmark_mask_rcnn, dtype, device, repeats, size),
    }
    for section in SECTIONS:
        if section in args.sections:
            runs[section](record=functools.partial(record, section))
    print('\n' + markdown(result) + '\n')
    chart = plot(result, f'{stem}.png')
    print(f'written: {stem}.json, {stem}.md' +
          (f', {stem}.png' if chart else ' (no chart: matplotlib missing)'))


if __name__ == '__main__':
    main()
