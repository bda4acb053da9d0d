"""FLOPs and parameters of a detector or segmentor on a dummy image.

FLOPs are counted as multiply-accumulates by mmengine's FlopAnalyzer, plus
the ACmix local attention (q.k and attention-weighted sums of v over each
window), which the analyzer does not see because it is made of
element-wise operations.

Usage:
    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]
"""
import argparse
from functools import partial
from typing import List, Tuple

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm

from acmix_mm.models.layers import ACmix
from acmix_mm.testing import build_model, synthetic_batch

DEFAULT_SHAPES = {'mmdet': (800, 1333), 'mmseg': (512, 512)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='input size (default: 800 1333 for mmdet, '
        '512 512 for mmseg)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries')
    return parser.parse_args()


def count_local_attention(model: torch.nn.Module) -> Tuple[List, List]:
    """Forward hooks that add up the ACmix local-attention MACs."""
    macs, handles = [0], []

    def hook(layer: ACmix, inputs, output: torch.Tensor) -> None:
        batch, channels, height, width = output.shape
        macs[0] += 2 * batch * channels * height * width * layer.kernel_att**2

    for module in model.modules():
        if isinstance(module, ACmix):
            handles.append(module.register_forward_hook(hook))
    return macs, handles


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    height, width = args.shape or DEFAULT_SHAPES[scope]

    model = revert_sync_batchnorm(build_model(cfg)).eval()
    batch = synthetic_batch(scope, num_images=1, image_size=(height, width))
    data = model.data_preprocessor(batch, training=False)
    model.forward = partial(
        model.forward, data_samples=data['data_samples'], mode='tensor')
    attention_macs, handles = count_local_attention(model)
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs=(data['inputs'], ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        total = analyzer.total()
    for handle in handles:
        handle.remove()
    backbone_total = analyzer.by_module().get('backbone', 0)
    params = parameter_count(model)

    input_shape = tuple(data['inputs'].shape[-2:])
    print(f'config:     {args.config}')
    print(f'input:      {height}x{width} (padded to {input_shape[0]}x'
          f'{input_shape[1]})')
    print(f'GFLOPs:     {(total + attention_macs[0]) / 1e9:.2f} (backbone '
          f'{(backbone_total + attention_macs[0]) / 1e9:.2f}, of which ACmix '
          f'local attention {attention_macs[0] / 1e9:.2f})')
    print(f'parameters: {params[""] / 1e6:.2f}M (backbone '
          f'{params.get("backbone", 0) / 1e6:.2f}M)')


if __name__ == '__main__':
    main()
