"""Straightforward ACmix models written from the specification, for tests.

They use the reference code's parameter names (so their state dicts are
"reference checkpoints") and compute everything the plain way: explicit
neighbourhood gathering, explicit windows, no folding or fusion. Defined for
every input size (reflection by repeated mirroring, ceil output size).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def mirror(index: int, size: int) -> int:
    """Reflect an out-of-range index back into [0, size) by mirroring."""
    if size == 1:
        return 0
    while index < 0 or index >= size:
        index = -index if index < 0 else 2 * (size - 1) - index
    return index


def neighbourhood(size: int, kernel: int, stride: int) -> torch.Tensor:
    """(ceil(size / stride), kernel) source indices of each query's window."""
    half = kernel // 2
    return torch.tensor(
        [[mirror(stride * i + a - half, size) for a in range(kernel)]
         for i in range(math.ceil(size / stride))])


class RefACmix(nn.Module):
    """ACmix, convolutional flavour (specification section 2)."""

    def __init__(self,
                 in_planes,
                 out_planes,
                 kernel_att=7,
                 head=4,
                 kernel_conv=3,
                 stride=1):
        super().__init__()
        self.head, self.kernel_att, self.kernel_conv = head, kernel_att, \
            kernel_conv
        self.stride = stride
        self.head_dim = out_planes // head
        self.rate1 = nn.Parameter(torch.full((1, ), 0.5))
        self.rate2 = nn.Parameter(torch.full((1, ), 0.5))
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.fc = nn.Conv2d(3 * head, kernel_conv**2, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel_conv**2 * self.head_dim,
            out_planes,
            kernel_conv,
            stride=stride,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=False)

    def forward(self, x):
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        b, c, h, w = q.shape
        s, ka = self.stride, self.kernel_att
        loc_w = torch.linspace(-1., 1., w, dtype=x.dtype).repeat(h, 1)
        loc_h = torch.linspace(-1., 1., h, dtype=x.dtype)[:, None].repeat(1, w)
        pe = self.conv_p(torch.stack([loc_w, loc_h])[None])[0]  # hd, h, w

        rows = neighbourhood(h, ka, s)  # ho, ka
        cols = neighbourhood(w, ka, s)  # wo, ka

        def gather(t):  # (..., h, w) -> (..., ho, ka, wo, ka)
            return t[..., rows, :][..., cols]

        qh = q.view(b, self.head, self.head_dim, h, w)[..., ::s, ::s]
        qh = qh * self.head_dim**-0.5
        kh = gather(k.view(b, self.head, self.head_dim, h, w))
        vh = gather(v.view(b, self.head, self.head_dim, h, w))
        pe_q = pe[:, ::s, ::s][:, :, None, :, None]
        keys = kh + pe_q - gather(pe)
        logits = torch.einsum('bndxy,bndxayc->bnxyac', qh, keys)
        ho, wo = logits.shape[2:4]
        weights = logits.reshape(b, self.head, ho, wo, -1).softmax(-1)
        weights = weights.view_as(logits)
        out_att = torch.einsum('bnxyac,bndxayc->bndxy', weights, vh)
        out_att = out_att.reshape(b, c, ho, wo)

        maps = torch.cat(
            [t.view(b, self.head, self.head_dim, h * w) for t in (q, k, v)], 1)
        f = self.fc(maps)  # b, kc^2, hd, hw
        f = f.permute(0, 2, 1, 3).reshape(b, -1, h, w)
        out_conv = self.dep_conv(f)
        return self.rate1 * out_att + self.rate2 * out_conv


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = RefACmix(planes, planes, 7, 4, 3, stride=stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class RefResNetACmix(nn.Module):
    """torchvision-style ResNet with ACmix bottlenecks (section 4)."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, blocks in enumerate(layers):
            planes, stride = 64 * 2**i, 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                nn.BatchNorm2d(planes * 4))
            stage = [RefBottleneck(inplanes, planes, stride, downsample)]
            stage += [
                RefBottleneck(planes * 4, planes) for _ in range(blocks - 1)
            ]
            setattr(self, f'layer{i + 1}', nn.Sequential(*stage))
            inplanes = planes * 4
        self.fc = nn.Linear(2048, num_classes)

    def stage_outputs(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for i in range(4):
            x = getattr(self, f'layer{i + 1}')(x)
            outs.append(x)
        return outs


class RefWindowACmix(nn.Module):
    """Swin-ACmix attention on a (B, H, W, C) map whose H, W are multiples
    of the window (section 3)."""

    def __init__(self, dim, window, heads):
        super().__init__()
        self.dim, self.window, self.heads = dim, window, heads
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1)**2, heads) * 0.02)
        ys, xs = torch.meshgrid(
            torch.arange(window), torch.arange(window), indexing='ij')
        ys, xs = ys.flatten(), xs.flatten()
        index = ((ys[:, None] - ys[None] + window - 1) * (2 * window - 1) +
                 xs[:, None] - xs[None] + window - 1)
        self.register_buffer('relative_position_index', index)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Conv2d(3 * heads, 9, 1, bias=True)
        self.dep_conv = nn.Conv2d(
            9 * dim // heads,
            dim,
            3,
            padding=1,
            groups=dim // heads,
            bias=False)
        self.rate1 = nn.Parameter(torch.full((1, ), 0.5))
        self.rate2 = nn.Parameter(torch.full((1, ), 0.5))

    def forward(self, x, mask=None):
        b, h, w, c = x.shape
        hd, n, ws = c // self.heads, self.heads, self.window
        qkv = self.qkv(x)
        maps = qkv.reshape(b, h * w, 3 * n, hd).permute(0, 2, 1, 3)
        f = self.fc(maps)  # b, 9, hw, hd
        f = f.permute(0, 3, 1, 2).reshape(b, 9 * hd, h, w)
        out_conv = self.dep_conv(f).permute(0, 2, 3, 1)

        out = torch.zeros(b, h, w, c, dtype=x.dtype)
        bias = self.relative_position_bias_table[
            self.relative_position_index.flatten()].view(ws * ws, ws * ws, n)
        bias = bias.permute(2, 0, 1)
        window_id = 0
        for i in range(0, h, ws):
            for j in range(0, w, ws):
                tokens = qkv[:, i:i + ws,
                             j:j + ws].reshape(b, ws * ws, 3, n, hd)
                q, k, v = tokens.permute(2, 0, 3, 1, 4)
                attn = (q * hd**-0.5) @ k.transpose(-1, -2) + bias
                if mask is not None:
                    attn = attn + mask[window_id]
                y = (attn.softmax(-1) @ v).transpose(1,
                                                     2).reshape(b, ws * ws, c)
                out[:, i:i + ws, j:j + ws] = self.proj(y).view(b, ws, ws, c)
                window_id += 1
        return self.rate1 * out + self.rate2 * out_conv


class RefMlp(nn.Module):

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def shift_mask(h, w, window, shift):
    region = torch.zeros(h, w)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[rows, cols] = label
            label += 1
    windows = [
        region[i:i + window, j:j + window].flatten()
        for i in range(0, h, window) for j in range(0, w, window)
    ]
    labels = torch.stack(windows)
    diff = labels[:, None, :] - labels[:, :, None]
    return torch.where(diff != 0, -100., 0.)


class RefSwinBlock(nn.Module):

    def __init__(self, dim, heads, resolution, window, shift):
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        self.window, self.shift, self.resolution = window, shift, resolution
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefWindowACmix(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefMlp(dim, 4 * dim)
        if shift:
            self.register_buffer('attn_mask',
                                 shift_mask(*resolution, window, shift))
        else:
            self.attn_mask = None

    def forward(self, x):
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = self.attn(y, self.attn_mask)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class RefPatchMerging(nn.Module):

    def __init__(self, resolution, dim):
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([
            x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2,
                                                                    1::2]
        ], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class RefSwinLayer(nn.Module):

    def __init__(self, dim, resolution, depth, heads, window, downsample):
        super().__init__()
        self.blocks = nn.ModuleList([
            RefSwinBlock(dim, heads, resolution, window,
                         0 if i % 2 == 0 else window // 2)
            for i in range(depth)
        ])
        self.downsample = RefPatchMerging(resolution, dim) \
            if downsample else None


class RefPatchEmbed(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)


class RefSwinACmix(nn.Module):
    """Swin-ACmix classifier at a fixed image size (section 3)."""

    def __init__(self,
                 img_size=224,
                 embed_dim=96,
                 depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24),
                 window=7,
                 num_classes=1000):
        super().__init__()
        self.patch_embed = RefPatchEmbed(embed_dim)
        res = img_size // 4
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            self.layers.append(
                RefSwinLayer(embed_dim * 2**i, (res // 2**i, res // 2**i),
                             depth, heads, window, i < len(depths) - 1))
        self.num_features = embed_dim * 2**(len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def stage_outputs(self, x):
        """Per stage (B, C, H, W) features before patch merging."""
        x = self.patch_embed.proj(x)
        b, c, h, w = x.shape
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        outs = []
        for layer in self.layers:
            for block in layer.blocks:
                x = block(x)
            h, w = layer.blocks[0].resolution
            outs.append(x.transpose(1, 2).reshape(b, -1, h, w))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return outs


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and norm statistic with random values so that
    tests exercise all weights, not just their initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 0.5 if param.dim() > 1 else 0.2
            param.copy_(
                torch.randn(param.shape, generator=gen) * scale /
                max(1., param[0].numel()**0.5))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(
                    torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(
                    torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.add_(1.)
            elif isinstance(m, nn.LayerNorm):
                m.weight.add_(1.)
    return module
