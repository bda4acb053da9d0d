"""One fused forward and backward of the local attention at ACmix-ResNet-50
COCO shapes with fixed launch configs (no autotuning, so each kernel runs
once): the program to run under ncu or compute-sanitizer.

    ncu --clock-control none --metrics ... \
        python tools/gpu_check/profile_layer.py
    compute-sanitizer --tool memcheck \
        python tools/gpu_check/profile_layer.py --shapes coco/stage1
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from acmix_mm.ops import triton_kernels  # noqa: E402

# name: (batch, channels, height, width, stride, forward and backward
# (num_warps, num_stages), as the autotuner picked them on an H100).
SHAPES = {
    'coco/stage1': (2, 64, 200, 334, 1, (1, 2), (1, 1)),
    'coco/stage4': (2, 512, 25, 42, 1, (4, 2), (8, 1)),
}
HEADS, KERNEL = 4, 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--shapes', nargs='+', choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument(
        '--dtype',
        choices=['bfloat16', 'float16', 'float32'],
        default='bfloat16')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error('needs a CUDA GPU (the kernels run once each, to be '
                     'profiled)')
    dtype = getattr(torch, args.dtype)
    for name in args.shapes:
        batch, channels, height, width, stride, fwd, bwd = SHAPES[name]
        head_dim = channels // HEADS
        q, k, v = torch.randn(
            3,
            batch,
            HEADS,
            head_dim,
            height,
            width,
            device='cuda',
            dtype=dtype).unbind(0)
        scale = head_dim**-0.5
        out, lse = triton_kernels.local_attention_forward(
            q, k, v, KERNEL, stride, scale, config=fwd)
        grads = triton_kernels.local_attention_backward(
            torch.randn_like(out),
            q,
            k,
            v,
            out,
            lse,
            KERNEL,
            stride,
            scale,
            config=bwd)
        torch.cuda.synchronize()
        finite = all(torch.isfinite(t).all().item() for t in (out, *grads))
        print(f'{name}: {triton_kernels.last_tuning_configs()}, '
              f'finite: {finite}')


if __name__ == '__main__':
    main()
