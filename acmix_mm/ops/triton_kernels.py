"""Triton kernels of ACmix's local (sliding-window) attention.

The op is defined by :func:`~acmix_mm.ops.reference.
local_attention_reference`. Instead of gathering the ``kernel_size ** 2``
reflected neighbours of every query, a program takes a tile of queries and
the *actual* key pixels around it (the tile dilated by
``pad = kernel_size // 2``, flattened row-major) and runs tensor-core
matmuls over chunks of that region with an online softmax. Reflection is
exact: a key reached by ``m`` window offsets gets weight ``m * exp(logit)``,
with ``m`` counted in the kernel (``m = 0`` masks every other key).

Tensors are (B, heads, D, H, W) with arbitrary strides; tiles are loaded
channel-major, [BLOCK_D, pixels], so neighbouring threads read neighbouring
pixels. Sizes and size-dependent strides are not specialised, so new image
sizes reuse the compiled kernels. The backward is deterministic: one kernel
writes dQ (and delta = rowsum(dO * O)) per query tile, another dK and dV
per key tile from the queries that reach it; no atomics.
"""
import contextlib
import math
import os
import re
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton import empty_head_contiguous

SUPPORTED_KERNEL_SIZES = (3, 5, 7)
SUPPORTED_STRIDES = (1, 2)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_HEAD_DIM, MAX_HEAD_DIM, HEAD_DIM_MULTIPLE = 8, 128, 8

_TRUE_WORDS = ('1', 'true', 'on', 'yes', 'y')
_INTERPRETER_ACTIVE = os.environ.get('TRITON_INTERPRET',
                                     '').strip().lower() in _TRUE_WORDS

# Pixels of a tile's region handled per loop step: fewer for float32, whose
# dot operands take twice the registers and are split in high and low TF32
# parts.
_REGION_CHUNK = {torch.float32: 32, torch.float16: 64, torch.bfloat16: 64}
# Triton 3 runs float32 dots as three TF32 tensor-core products ('tf32x3',
# hi*hi + hi*lo + lo*hi): float32 accuracy without the register-hungry FMA
# path. Triton 2 has no such mode; there float32 dots run exactly on the FMA
# units. 16-bit dots are the same on both.
_TRITON_VERSION = tuple(
    int(part) for part in re.findall(r'\d+', triton.__version__)[:2])
_TRITON_3 = tl.constexpr(_TRITON_VERSION >= (3, 0))
# Logit of keys out of reach and start of the running max: exp() of it
# underflows to 0 and, unlike -inf, it never gives inf - inf.
_MASKED_LOGIT = tl.constexpr(-1.0e30)
_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(1.4426950408889634)


def interpreter_active() -> bool:
    """Whether the kernels run in Triton's CPU interpreter.

    Decided when this module is imported, as Triton decides it when the
    kernels are decorated: ``TRITON_INTERPRET=1`` must be set before.
    """
    return _INTERPRETER_ACTIVE


# ----------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------


@triton.jit
def _matmul(a, b):
    """a @ b in float32, float32-accurate for float32 operands."""
    if _TRITON_3:
        return tl.dot(a, b, input_precision='tf32x3')
    else:
        return tl.dot(a, b, allow_tf32=False)


@triton.jit
def _matmul_add(a, b, acc):
    """acc + a @ b, as :func:`_matmul`."""
    if _TRITON_3:
        return tl.dot(a, b, acc, input_precision='tf32x3')
    else:
        return acc + tl.dot(a, b, allow_tf32=False)


# exp2 and log2: Triton 3's builtins (one MUFU instruction each); Triton 2
# has them as libdevice calls only. Defined per version because Triton 2
# resolves every name a kernel mentions, also in branches not taken.
if hasattr(tl, 'exp2'):

    @triton.jit
    def _exp2(x):
        """2 ** x."""
        return tl.exp2(x)

    @triton.jit
    def _log2(x):
        """log2(x)."""
        return tl.log2(x)
else:

    @triton.jit
    def _exp2(x):
        """2 ** x."""
        return tl.math.exp2(x)

    @triton.jit
    def _log2(x):
        """log2(x)."""
        return tl.math.log2(x)


@triton.jit
def _reflect(position, size, PAD: tl.constexpr, SMALL_MAP: tl.constexpr):
    """Source pixel of padded ``position`` (in [-pad, size - 1 + pad]) on
    an axis of ``size`` pixels: mirrored at the edges, the edge pixel not
    repeated (:func:`acmix_mm.ops.reflection.reflect`).

    If size > pad, one mirror at most: |p|, then 2 * (size - 1) - p past
    the far edge. SMALL_MAP (some side <= pad) folds by the period
    2 * (size - 1) (1 for size 1, which maps everything to 0); the shift by
    PAD periods keeps the remainder's operand non-negative. Positions past
    the far edge by more than pad (slots only of queries past the map) are
    clamped into the map, so that every load stays in bounds.
    """
    if SMALL_MAP:
        period = tl.maximum(2 * size - 2, 1)
        folded = (position + PAD * period) % period
        return tl.minimum(folded, period - folded)
    else:
        position = tl.abs(position)
        return tl.maximum(tl.minimum(position, 2 * size - 2 - position), 0)


@triton.jit
def _band(offset, pad):
    """0 where |offset| <= pad (inside a window), else the masked logit:
    the additive mask of the static window pattern."""
    return tl.where((offset >= -pad) & (offset <= pad), 0.0, _MASKED_LOGIT)


@triton.jit
def _exponent_scale(scale):
    """|scale| * log2(e): the factor of exp2 for unscaled logits of operands
    signed by :func:`_signed`. At least 1e-20 * log2(e), so that a masked
    logit still weighs 0 at scale 0 (where real logits all weigh 1)."""
    return tl.maximum(tl.abs(scale), 1.0e-20) * _LOG2E


@triton.jit
def _signed(operand, scale):
    """``operand`` negated if scale < 0: logits of it are scale / |scale|
    times the logits, so that the slot kernels, which mask and take maxima
    before scaling, need only |scale|."""
    return tl.where(scale < 0, -operand, operand)


@triton.jit
def _add_axis_hits(count, query_pos, key_pos, size, weight,
                   KERNEL_SIZE: tl.constexpr, SMALL_MAP: tl.constexpr):
    """Add int ``weight`` to ``count`` once per offset o in [-pad, pad] with
    reflect(query_pos + o) == key_pos along an axis of ``size`` pixels.

    ``query_pos`` and ``key_pos`` (both in [0, size) where it matters)
    broadcast to count's shape ([N, 1] against [1, M] or the reverse).

    If size > pad, a window [q - pad, q + pad] meets at most the first
    mirror image on each side, so a key k is hit directly (|k - q| <= pad),
    through the mirror at 0 (position -k, for k >= 1) and through the
    mirror at size - 1 (position 2 * (size - 1) - k, for k < size - 1).
    SMALL_MAP (some axis has size <= pad) counts the offsets one by one:
    repeated mirroring has period 2 * (size - 1) (1 for size 1, which maps
    everything to 0) and a position folded into [0, period) reflects to
    min(folded, period - folded); the shift by 3 * pad periods keeps the
    remainder's operand non-negative (query_pos >= -2 * pad).
    """
    pad = KERNEL_SIZE // 2
    if SMALL_MAP:
        period = tl.maximum(2 * size - 2, 1)
        first = query_pos - pad + period * (3 * pad)
        for step in tl.static_range(KERNEL_SIZE):
            folded = (first + step) % period
            source = tl.minimum(folded, period - folded)
            count += tl.where(source == key_pos, weight, 0)
    else:
        last = size - 1
        out_of_reach = 2 * pad + 1
        below = tl.where(key_pos >= 1, key_pos, out_of_reach)
        above = tl.where(key_pos < last, last - key_pos, out_of_reach)
        count += tl.where(tl.abs(key_pos - query_pos) <= pad, weight, 0)
        count += tl.where(below + query_pos <= pad, weight, 0)
        count += tl.where(above + (last - query_pos) <= pad, weight, 0)
    return count


@triton.jit
def _window_multiplicity(query_y, query_x, key_y, key_x, pair_valid, height,
                         width, KERNEL_SIZE: tl.constexpr,
                         SMALL_MAP: tl.constexpr):
    """float32 number of window offsets of each query that land on each
    key: (row hits) * (column hits), 0 where ``pair_valid`` is False.
    Inputs broadcast as in :func:`_add_axis_hits`.

    Both hit counts (<= KERNEL_SIZE < 8) share one int32 accumulator,
    8 * rows + cols, to keep one tile of registers live, not two.
    """
    packed = tl.zeros_like(query_y + key_y)
    packed = _add_axis_hits(packed, query_y, key_y, height, 8, KERNEL_SIZE,
                            SMALL_MAP)
    packed = _add_axis_hits(packed, query_x, key_x, width, 1, KERNEL_SIZE,
                            SMALL_MAP)
    rows = packed >> 3
    cols = packed & 7
    return tl.where(pair_valid, (rows * cols).to(tl.float32), 0.0)


@triton.jit
def _channel_major(channel_stride, pixel_offsets, pixel_valid,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets and mask of a [BLOCK_D, N] tile of N pixels (channels beyond
    HEAD_DIM and invalid pixels masked; ``pixel_valid`` None: all pixels
    valid, a [BLOCK_D, 1] mask)."""
    channels = tl.arange(0, BLOCK_D)
    offsets = channels[:, None] * channel_stride + pixel_offsets[None, :]
    if pixel_valid is None:
        mask = (channels < HEAD_DIM)[:, None]
    else:
        mask = (channels < HEAD_DIM)[:, None] & pixel_valid[None, :]
    return offsets, mask


@triton.jit
def _unmasked(pixel_valid, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Whether a channel-major tile needs no mask: all its pixels valid
    (``pixel_valid`` None) and all its channels real."""
    return (pixel_valid is None) & (HEAD_DIM == BLOCK_D)


@triton.jit
def _load_channel_major(ptr,
                        channel_stride,
                        pixel_offsets,
                        pixel_valid,
                        HEAD_DIM: tl.constexpr,
                        BLOCK_D: tl.constexpr,
                        EVICT_LAST: tl.constexpr = False):
    """[BLOCK_D, N] tile of N pixels (zeros beyond HEAD_DIM / off-map)."""
    offsets, mask = _channel_major(channel_stride, pixel_offsets, pixel_valid,
                                   HEAD_DIM, BLOCK_D)
    if _unmasked(pixel_valid, HEAD_DIM, BLOCK_D):
        tile = tl.load(
            ptr + offsets, eviction_policy='evict_last' if EVICT_LAST else '')
    else:
        tile = tl.load(
            ptr + offsets,
            mask=mask,
            other=0.0,
            eviction_policy='evict_last' if EVICT_LAST else '')
    return tile


@triton.jit
def _store_channel_major(ptr, values, channel_stride, pixel_offsets,
                         pixel_valid, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """Store a [N, BLOCK_D] tile (pixels x channels) to N pixels."""
    offsets, mask = _channel_major(channel_stride, pixel_offsets, pixel_valid,
                                   HEAD_DIM, BLOCK_D)
    values = tl.trans(values).to(ptr.dtype.element_ty)
    if _unmasked(pixel_valid, HEAD_DIM, BLOCK_D):
        tl.store(ptr + offsets, values)
    else:
        tl.store(ptr + offsets, values, mask=mask)


@triton.jit
def _map_offset(batch_head, heads, stride_batch, stride_head):
    """int64 offset of map (batch, head) with batch_head = batch*heads+head."""
    batch = (batch_head // heads).to(tl.int64)
    head = (batch_head % heads).to(tl.int64)
    return batch * stride_batch + head * stride_head


@triton.jit
def _tile_pixels(tile, rows, cols, BLOCK_H: tl.constexpr,
                 BLOCK_W: tl.constexpr):
    """Origin (row, col) and pixels [BLOCK_H * BLOCK_W] (row, col, valid)
    of tile ``tile`` of a rows x cols grid tiled row-major."""
    tiles_w = tl.cdiv(cols, BLOCK_W)
    first_row = (tile // tiles_w) * BLOCK_H
    first_col = (tile % tiles_w) * BLOCK_W
    pixel = tl.arange(0, BLOCK_H * BLOCK_W)
    row = first_row + pixel // BLOCK_W
    col = first_col + pixel % BLOCK_W
    return first_row, first_col, row, col, (row < rows) & (col < cols)


@triton.jit
def _region_pixels(first_row, first_col, start, rows, cols,
                   REGION_W: tl.constexpr, REGION_SIZE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Pixels start .. start + BLOCK - 1 (row, col, valid) of the region of
    REGION_SIZE pixels, REGION_W per row, whose origin is (first_row,
    first_col) on a rows x cols grid."""
    index = start + tl.arange(0, BLOCK)
    row = first_row + index // REGION_W
    col = first_col + index % REGION_W
    valid = ((index < REGION_SIZE) & (row >= 0) & (row < rows) & (col >= 0)
             & (col < cols))
    return row, col, valid


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------

# Sizes and the strides that grow with them: not specialised, so a new image
# size does not compile new kernels. Column strides (usually 1) stay
# specialised for contiguity.
_SIZE_ARGS = ['height', 'width', 'out_height', 'out_width']
_MAP_STRIDES = [
    f'stride_{name}{axis}'
    for name in ('q', 'k', 'v', 'o', 'g', 'dq', 'dk', 'dv')
    for axis in ('b', 'h', 'd', 'y')
]


def _jit(fn):
    """``triton.jit`` with the size arguments ``fn`` has left unspecialised."""
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    unspecialised = [
        name for name in _SIZE_ARGS + _MAP_STRIDES if name in names
    ]
    return triton.jit(fn, do_not_specialize=unspecialised)


@_jit
def _forward_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, stride_qb, stride_qh, stride_qd,
        stride_qy, stride_qx, stride_kb, stride_kh, stride_kd, stride_ky,
        stride_kx, stride_vb, stride_vh, stride_vd, stride_vy, stride_vx,
        stride_ob, stride_oh, stride_od, stride_oy, stride_ox, heads, height,
        width, out_height, out_width, scale, HEAD_DIM: tl.constexpr,
        KERNEL_SIZE: tl.constexpr, STRIDE: tl.constexpr,
        SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_W: tl.constexpr, REGION_W: tl.constexpr,
        REGION_SIZE: tl.constexpr, BLOCK_REGION: tl.constexpr):
    """One program per (map, BLOCK_H x BLOCK_W output tile): out and lse of
    its queries, looping over the key region in BLOCK_REGION chunks."""
    pad = KERNEL_SIZE // 2
    tiles = tl.cdiv(out_height, BLOCK_H) * tl.cdiv(out_width, BLOCK_W)
    batch_head = tl.program_id(0) // tiles
    first_row, first_col, out_row, out_col, query_valid = _tile_pixels(
        tl.program_id(0) % tiles, out_height, out_width, BLOCK_H, BLOCK_W)
    query_y, query_x = STRIDE * out_row, STRIDE * out_col
    q = _load_channel_major(
        q_ptr + _map_offset(batch_head, heads, stride_qb, stride_qh),
        stride_qd, query_y * stride_qy + query_x * stride_qx, query_valid,
        HEAD_DIM, BLOCK_D)
    q = tl.trans(q)
    k_ptr += _map_offset(batch_head, heads, stride_kb, stride_kh)
    v_ptr += _map_offset(batch_head, heads, stride_vb, stride_vh)

    row_max = tl.full([BLOCK_H * BLOCK_W], _MASKED_LOGIT, tl.float32)
    row_sum = tl.zeros([BLOCK_H * BLOCK_W], tl.float32)
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_D], tl.float32)
    for start in range(0, REGION_SIZE, BLOCK_REGION):
        key_y, key_x, key_valid = _region_pixels(STRIDE * first_row - pad,
                                                 STRIDE * first_col - pad,
                                                 start, height, width,
                                                 REGION_W, REGION_SIZE,
                                                 BLOCK_REGION)
        k = _load_channel_major(k_ptr, stride_kd,
                                key_y * stride_ky + key_x * stride_kx,
                                key_valid, HEAD_DIM, BLOCK_D)
        v = _load_channel_major(v_ptr, stride_vd,
                                key_y * stride_vy + key_x * stride_vx,
                                key_valid, HEAD_DIM, BLOCK_D)
        logits = _matmul(q, k) * scale
        multiplicity = _window_multiplicity(
            query_y[:, None], query_x[:, None], key_y[None, :], key_x[None, :],
            query_valid[:, None] & key_valid[None, :], height, width,
            KERNEL_SIZE, SMALL_MAP)
        logits = tl.where(multiplicity > 0, logits, _MASKED_LOGIT)
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        rescale = tl.exp(row_max - new_max)
        weights = multiplicity * tl.exp(logits - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(weights, axis=1)
        acc = _matmul_add(
            weights.to(v.dtype), tl.trans(v), acc * rescale[:, None])
        row_max = new_max

    row_sum = tl.where(query_valid, row_sum, 1.0)
    _store_channel_major(
        out_ptr + _map_offset(batch_head, heads, stride_ob, stride_oh),
        acc / row_sum[:, None], stride_od,
        out_row * stride_oy + out_col * stride_ox, query_valid, HEAD_DIM,
        BLOCK_D)
    lse_offsets = (
        batch_head.to(tl.int64) * out_height * out_width +
        out_row * out_width + out_col)
    tl.store(
        lse_ptr + lse_offsets, row_max + tl.log(row_sum), mask=query_valid)


@triton.jit
def _load_pixels(ptr,
                 pixel_offsets,
                 pixel_valid,
                 channel_stride,
                 HEAD_DIM: tl.constexpr,
                 BLOCK_D: tl.constexpr,
                 HEAD_CONTIGUOUS: tl.constexpr,
                 EVICT_LAST: tl.constexpr = False):
    """[N, BLOCK_D] tile of N pixels (zeros beyond HEAD_DIM / off-map):
    channel-major loads, or with HEAD_CONTIGUOUS (channel stride 1) one
    vector per pixel."""
    if HEAD_CONTIGUOUS:
        channels = tl.arange(0, BLOCK_D)
        offsets = pixel_offsets[:, None] + channels[None, :]
        if _unmasked(pixel_valid, HEAD_DIM, BLOCK_D):
            tile = tl.load(
                ptr + offsets,
                eviction_policy='evict_last' if EVICT_LAST else '')
        else:
            mask = (channels < HEAD_DIM)[None, :]
            if pixel_valid is not None:
                mask = mask & pixel_valid[:, None]
            tile = tl.load(
                ptr + offsets,
                mask=mask,
                other=0.0,
                eviction_policy='evict_last' if EVICT_LAST else '')
    else:
        tile = tl.trans(
            _load_channel_major(ptr, channel_stride, pixel_offsets,
                                pixel_valid, HEAD_DIM, BLOCK_D, EVICT_LAST))
    return tile


@triton.jit
def _slot_tile_geometry(first_col, width, stride_kx, stride_vx,
                        KERNEL_SIZE: tl.constexpr, STRIDE: tl.constexpr,
                        SMALL_MAP: tl.constexpr, TILE_H: tl.constexpr,
                        TILE_W: tl.constexpr, CHUNK_W: tl.constexpr):
    """Of a program whose query tiles start at column ``first_col``: the
    offsets of each slot's source column in k and v and which slots some
    window covers [CHUNK_W], each query's row in its tile and output
    column [TILE_H * TILE_W], and the column band mask [TILE_H * TILE_W,
    CHUNK_W].

    Slot s of a row is padded column STRIDE * first_col - pad + s; query
    i's window covers slots STRIDE * (i % TILE_W) + [0, KERNEL_SIZE).
    """
    pad = KERNEL_SIZE // 2
    slot = tl.arange(0, CHUNK_W)
    key_x = _reflect(STRIDE * first_col - pad + slot, width, pad, SMALL_MAP)
    query = tl.arange(0, TILE_H * TILE_W)
    col_bias = _band(slot[None, :] - STRIDE * (query % TILE_W)[:, None] - pad,
                     pad)
    return (key_x * stride_kx, key_x * stride_vx, slot
            < STRIDE * (TILE_W - 1) + KERNEL_SIZE, query // TILE_W,
            first_col + query % TILE_W, col_bias)


@triton.jit
def _load_slot_row(ptr,
                   slot_row,
                   first_row,
                   height,
                   stride_y,
                   offsets,
                   slot_used,
                   stride_d,
                   HEAD_DIM: tl.constexpr,
                   KERNEL_SIZE: tl.constexpr,
                   STRIDE: tl.constexpr,
                   SMALL_MAP: tl.constexpr,
                   BLOCK_D: tl.constexpr,
                   CONTIGUOUS: tl.constexpr,
                   EVICT_LAST: tl.constexpr = False):
    """[CHUNK_W, BLOCK_D] of k or v at key slot row ``slot_row`` (counted
    from the one of the program's first query row), from its reflected
    source row; head-contiguous (vector loads) or channel-major."""
    pad = KERNEL_SIZE // 2
    key_y = _reflect(STRIDE * first_row - pad + slot_row, height, pad,
                     SMALL_MAP)
    return _load_pixels(ptr + key_y * stride_y, offsets, slot_used, stride_d,
                        HEAD_DIM, BLOCK_D, CONTIGUOUS, EVICT_LAST)


@triton.jit
def _load_slot_keys_values(k_ptr, v_ptr, slot_row, first_row, height,
                           stride_ky, stride_vy, offsets_k, offsets_v,
                           slot_used, stride_kd, stride_vd,
                           HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
                           STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr,
                           BLOCK_D: tl.constexpr, K_CONTIGUOUS: tl.constexpr,
                           V_CONTIGUOUS: tl.constexpr):
    """k and v [CHUNK_W, BLOCK_D] of key slot row ``slot_row``
    (:func:`_load_slot_row`)."""
    k = _load_slot_row(k_ptr, slot_row, first_row, height, stride_ky,
                       offsets_k, slot_used, stride_kd, HEAD_DIM, KERNEL_SIZE,
                       STRIDE, SMALL_MAP, BLOCK_D, K_CONTIGUOUS)
    v = _load_slot_row(v_ptr, slot_row, first_row, height, stride_vy,
                       offsets_v, slot_used, stride_vd, HEAD_DIM, KERNEL_SIZE,
                       STRIDE, SMALL_MAP, BLOCK_D, V_CONTIGUOUS)
    return k, v


@triton.jit
def _slot_row_bias(col_bias, slot_row, query_row, KERNEL_SIZE: tl.constexpr,
                   STRIDE: tl.constexpr, TILE_H: tl.constexpr):
    """Additive mask [N, CHUNK_W] of a tile's queries against its key slot
    row ``slot_row`` (constexpr, counted from the tile's first): the column
    band, plus the row band where some query row does not reach the row."""
    bias = col_bias
    if (slot_row < STRIDE * (TILE_H - 1)) | (slot_row >= KERNEL_SIZE):
        bias = col_bias + _band(
            slot_row - STRIDE * query_row - KERNEL_SIZE // 2,
            KERNEL_SIZE // 2)[:, None]
    return bias


@triton.jit
def _slot_row_max(q, k, bias, logit_max):
    """Elementwise maximum of ``logit_max`` [N, CHUNK_W] and the masked
    logits (unscaled, q . k + bias) of queries q [N, BLOCK_D] against a row
    of key slots k [CHUNK_W, BLOCK_D]: the forward's first pass, which
    reduces over slots only once, at its end."""
    return tl.maximum(logit_max, _matmul_add(q, tl.trans(k), bias))


@triton.jit
def _attend_slot_row(q, k, v, bias, scaled_max, weight_sums, acc, scale_log2):
    """The forward's second pass over a row of key slots k, v [CHUNK_W,
    BLOCK_D]: weights exp2(logit * scale_log2 - scaled_max) of queries q
    [N, BLOCK_D] with the additive mask ``bias``, added to weight_sums
    [N, CHUNK_W] (per slot until the end) and, times v, to acc [N,
    BLOCK_D]. scaled_max [N] is the first pass's final maximum logit times
    scale_log2, so nothing is rescaled; a masked logit (about -1e30)
    weighs 0."""
    logits = _matmul_add(q, tl.trans(k), bias)
    weights = _exp2(logits * scale_log2 - scaled_max[:, None])
    return weight_sums + weights, _matmul_add(weights.to(v.dtype), v, acc)


@triton.jit
def _store_slot_tile(out_ptr, lse_ptr, acc, weight_sums, row_max, out_row,
                     out_col, batch_head, out_height, out_width, scale,
                     stride_od, stride_oy, stride_ox, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """Store out and lse (natural log) of a tile of queries, whose
    row_max is of unscaled logits of signed operands (times |scale|)."""
    valid = (out_row < out_height) & (out_col < out_width)
    row_sum = tl.where(valid, tl.sum(weight_sums, axis=1), 1.0)
    _store_channel_major(out_ptr,
                         acc * (1.0 / row_sum)[:, None], stride_od,
                         out_row * stride_oy + out_col * stride_ox, valid,
                         HEAD_DIM, BLOCK_D)
    lse_offsets = (
        batch_head.to(tl.int64) * out_height * out_width +
        out_row * out_width + out_col)
    tl.store(
        lse_ptr + lse_offsets,
        row_max * tl.abs(scale) + _log2(row_sum) * _LN2,
        mask=valid)


@_jit
def _slot_forward_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, stride_qb, stride_qh, stride_qd,
        stride_qy, stride_qx, stride_kb, stride_kh, stride_kd, stride_ky,
        stride_kx, stride_vb, stride_vh, stride_vd, stride_vy, stride_vx,
        stride_ob, stride_oh, stride_od, stride_oy, stride_ox, heads, height,
        width, out_height, out_width, scale, HEAD_DIM: tl.constexpr,
        KERNEL_SIZE: tl.constexpr, STRIDE: tl.constexpr,
        SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr, TILE_H: tl.constexpr,
        TILE_W: tl.constexpr, TILES: tl.constexpr, CHUNK_W: tl.constexpr,
        Q_VECTOR: tl.constexpr, K_VECTOR: tl.constexpr,
        V_VECTOR: tl.constexpr):
    """Program (column of tiles, row of TILES tiles, map): out and lse of
    TILES (1 or 2) TILE_H x TILE_W query tiles stacked vertically.

    The tiles' windows cover rows of key slots (positions of the
    reflection-padded map, each loaded from its reflected source pixel):
    CHUNK_W slots per row, STRIDE * (TILE_H - 1) + KERNEL_SIZE rows per
    tile, shared rows loaded once. The loop over them is unrolled, so each
    step's window mask is known at compile time. Q_VECTOR, K_VECTOR and
    V_VECTOR > 1: that tensor is head-contiguous (channel stride 1) and its
    other strides come in units of that many elements (so that vector loads
    of that many channels are aligned); 1: any strides, channel-major loads.
    """
    first_col = tl.program_id(0) * TILE_W
    first_row = tl.program_id(1) * (TILES * TILE_H)
    batch_head = tl.program_id(2)
    q_ptr += _map_offset(batch_head, heads, stride_qb * Q_VECTOR,
                         stride_qh * Q_VECTOR)
    k_ptr += _map_offset(batch_head, heads, stride_kb * K_VECTOR,
                         stride_kh * K_VECTOR)
    v_ptr += _map_offset(batch_head, heads, stride_vb * V_VECTOR,
                         stride_vh * V_VECTOR)
    out_ptr += _map_offset(batch_head, heads, stride_ob, stride_oh)

    (slot_offsets_k, slot_offsets_v, slot_used, query_row, out_col,
     col_bias) = _slot_tile_geometry(first_col, width, stride_kx * K_VECTOR,
                                     stride_vx * V_VECTOR, KERNEL_SIZE, STRIDE,
                                     SMALL_MAP, TILE_H, TILE_W, CHUNK_W)
    scale_log2 = _exponent_scale(scale)

    out_row0 = first_row + query_row
    q0 = _load_pixels(
        q_ptr,
        STRIDE * (out_row0 * (stride_qy * Q_VECTOR) + out_col *
                  (stride_qx * Q_VECTOR)),
        (out_row0 < out_height) & (out_col < out_width), stride_qd, HEAD_DIM,
        BLOCK_D, Q_VECTOR > 1)
    q0 = _signed(q0, scale)
    max0 = tl.full([TILE_H * TILE_W, CHUNK_W], _MASKED_LOGIT, tl.float32)
    out_row1 = out_row0 + TILE_H
    if TILES == 2:
        q1 = _load_pixels(
            q_ptr,
            STRIDE * (out_row1 * (stride_qy * Q_VECTOR) + out_col *
                      (stride_qx * Q_VECTOR)),
            (out_row1 < out_height) & (out_col < out_width), stride_qd,
            HEAD_DIM, BLOCK_D, Q_VECTOR > 1)
        q1 = _signed(q1, scale)
        max1 = max0

    # A tile covers STRIDE * (TILE_H - 1) + KERNEL_SIZE slot rows; query
    # row r of a tile first meets a key slot row at STRIDE * r. First pass:
    # each query's maximum logit, so that the second pass rescales nothing.
    # Its keys stay in L2 for the second pass (evict_last); the loads then
    # also differ, so the compiler does not merge them and hold every logit
    # of this pass until the next (twice the registers).
    for slot_row in tl.static_range(STRIDE * (TILES * TILE_H - 1) +
                                    KERNEL_SIZE):
        k = _load_slot_row(k_ptr, slot_row, first_row, height,
                           stride_ky * K_VECTOR, slot_offsets_k, slot_used,
                           stride_kd, HEAD_DIM, KERNEL_SIZE, STRIDE, SMALL_MAP,
                           BLOCK_D, K_VECTOR > 1, True)
        if slot_row < STRIDE * (TILE_H - 1) + KERNEL_SIZE:
            max0 = _slot_row_max(
                q0, k,
                _slot_row_bias(col_bias, slot_row, query_row, KERNEL_SIZE,
                               STRIDE, TILE_H), max0)
        if TILES == 2:
            if slot_row >= STRIDE * TILE_H:
                max1 = _slot_row_max(
                    q1, k,
                    _slot_row_bias(col_bias, slot_row - STRIDE * TILE_H,
                                   query_row, KERNEL_SIZE, STRIDE, TILE_H),
                    max1)

    max0 = tl.max(max0, axis=1)
    sums0 = tl.zeros([TILE_H * TILE_W, CHUNK_W], tl.float32)
    acc0 = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
    if TILES == 2:
        max1 = tl.max(max1, axis=1)
        sums1, acc1 = sums0, acc0
    for slot_row in tl.static_range(STRIDE * (TILES * TILE_H - 1) +
                                    KERNEL_SIZE):
        k, v = _load_slot_keys_values(
            k_ptr, v_ptr, slot_row, first_row, height, stride_ky * K_VECTOR,
            stride_vy * V_VECTOR, slot_offsets_k, slot_offsets_v, slot_used,
            stride_kd, stride_vd, HEAD_DIM, KERNEL_SIZE, STRIDE, SMALL_MAP,
            BLOCK_D, K_VECTOR > 1, V_VECTOR > 1)
        if slot_row < STRIDE * (TILE_H - 1) + KERNEL_SIZE:
            sums0, acc0 = _attend_slot_row(
                q0, k, v,
                _slot_row_bias(col_bias, slot_row, query_row, KERNEL_SIZE,
                               STRIDE, TILE_H), max0 * scale_log2, sums0, acc0,
                scale_log2)
        if TILES == 2:
            if slot_row >= STRIDE * TILE_H:
                sums1, acc1 = _attend_slot_row(
                    q1, k, v,
                    _slot_row_bias(col_bias, slot_row - STRIDE * TILE_H,
                                   query_row, KERNEL_SIZE, STRIDE, TILE_H),
                    max1 * scale_log2, sums1, acc1, scale_log2)

    _store_slot_tile(out_ptr, lse_ptr, acc0, sums0, max0, out_row0, out_col,
                     batch_head, out_height, out_width, scale, stride_od,
                     stride_oy, stride_ox, HEAD_DIM, BLOCK_D)
    if TILES == 2:
        _store_slot_tile(out_ptr, lse_ptr, acc1, sums1, max1, out_row1,
                         out_col, batch_head, out_height, out_width, scale,
                         stride_od, stride_oy, stride_ox, HEAD_DIM, BLOCK_D)


@triton.jit
def _store_query_grad(ptr, grad_q, channel_stride, row_stride, col_stride,
                      query_y, query_x, query_valid, height, width,
                      HEAD_DIM: tl.constexpr, STRIDE: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """Store dQ [N, BLOCK_D] at the query pixels and zeros at the input
    pixels between strided queries (each STRIDE x STRIDE cell once)."""
    _store_channel_major(ptr, grad_q, channel_stride,
                         query_y * row_stride + query_x * col_stride,
                         query_valid, HEAD_DIM, BLOCK_D)
    # Zeros made channel-major: Triton 2.1-2.3 cannot compile the store of
    # a transposed constant tile.
    for phase in tl.static_range(1, STRIDE * STRIDE):
        pixel_y = query_y + phase // STRIDE
        pixel_x = query_x + phase % STRIDE
        offsets, mask = _channel_major(
            channel_stride, pixel_y * row_stride + pixel_x * col_stride,
            query_valid & (pixel_y < height) & (pixel_x < width), HEAD_DIM,
            BLOCK_D)
        tl.store(
            ptr + offsets,
            tl.zeros_like(offsets).to(ptr.dtype.element_ty),
            mask=mask)


@_jit
def _grad_query_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, g_ptr, lse_ptr, delta_ptr, dq_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_ob, stride_oh, stride_od,
        stride_oy, stride_ox, stride_gb, stride_gh, stride_gd, stride_gy,
        stride_gx, stride_dqb, stride_dqh, stride_dqd, stride_dqy, stride_dqx,
        heads, height, width, out_height, out_width, scale,
        HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, REGION_W: tl.constexpr,
        REGION_SIZE: tl.constexpr, BLOCK_REGION: tl.constexpr,
        COMPUTE_GRAD_Q: tl.constexpr):
    """One program per (map, output tile): delta = rowsum(dO * O) of its
    queries (stored for the dK/dV kernel) and, if COMPUTE_GRAD_Q, their dQ
    = scale * sum_keys P * (dP - delta) * K over the key region."""
    pad = KERNEL_SIZE // 2
    tiles = tl.cdiv(out_height, BLOCK_H) * tl.cdiv(out_width, BLOCK_W)
    batch_head = tl.program_id(0) // tiles
    first_row, first_col, out_row, out_col, query_valid = _tile_pixels(
        tl.program_id(0) % tiles, out_height, out_width, BLOCK_H, BLOCK_W)
    grad_out = _load_channel_major(
        g_ptr + _map_offset(batch_head, heads, stride_gb, stride_gh),
        stride_gd, out_row * stride_gy + out_col * stride_gx, query_valid,
        HEAD_DIM, BLOCK_D)
    out = _load_channel_major(
        o_ptr + _map_offset(batch_head, heads, stride_ob, stride_oh),
        stride_od, out_row * stride_oy + out_col * stride_ox, query_valid,
        HEAD_DIM, BLOCK_D)
    delta = tl.sum(grad_out.to(tl.float32) * out.to(tl.float32), axis=0)
    stat_offsets = (
        batch_head.to(tl.int64) * out_height * out_width +
        out_row * out_width + out_col)
    tl.store(delta_ptr + stat_offsets, delta, mask=query_valid)
    if COMPUTE_GRAD_Q:
        query_y, query_x = STRIDE * out_row, STRIDE * out_col
        q = _load_channel_major(
            q_ptr + _map_offset(batch_head, heads, stride_qb, stride_qh),
            stride_qd, query_y * stride_qy + query_x * stride_qx, query_valid,
            HEAD_DIM, BLOCK_D)
        q = tl.trans(q)
        grad_out = tl.trans(grad_out)
        lse = tl.load(lse_ptr + stat_offsets, mask=query_valid, other=0.0)
        k_ptr += _map_offset(batch_head, heads, stride_kb, stride_kh)
        v_ptr += _map_offset(batch_head, heads, stride_vb, stride_vh)
        acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_D], tl.float32)
        for start in range(0, REGION_SIZE, BLOCK_REGION):
            key_y, key_x, key_valid = _region_pixels(STRIDE * first_row - pad,
                                                     STRIDE * first_col - pad,
                                                     start, height, width,
                                                     REGION_W, REGION_SIZE,
                                                     BLOCK_REGION)
            k = _load_channel_major(k_ptr, stride_kd,
                                    key_y * stride_ky + key_x * stride_kx,
                                    key_valid, HEAD_DIM, BLOCK_D)
            v = _load_channel_major(v_ptr, stride_vd,
                                    key_y * stride_vy + key_x * stride_vx,
                                    key_valid, HEAD_DIM, BLOCK_D)
            logits = _matmul(q, k) * scale
            multiplicity = _window_multiplicity(
                query_y[:, None], query_x[:, None], key_y[None, :],
                key_x[None, :], query_valid[:, None] & key_valid[None, :],
                height, width, KERNEL_SIZE, SMALL_MAP)
            probs = multiplicity * tl.exp(
                tl.where(multiplicity > 0, logits - lse[:, None],
                         _MASKED_LOGIT))
            grad_probs = _matmul(grad_out, v)
            grad_logits = probs * (grad_probs - delta[:, None])
            acc = _matmul_add(grad_logits.to(k.dtype), tl.trans(k), acc)
        _store_query_grad(
            dq_ptr + _map_offset(batch_head, heads, stride_dqb, stride_dqh),
            acc * scale, stride_dqd, stride_dqy, stride_dqx, query_y, query_x,
            query_valid, height, width, HEAD_DIM, STRIDE, BLOCK_D)


@triton.jit
def _slot_query_inputs(q_ptr, o_ptr, g_ptr, lse_ptr, delta_ptr, out_row,
                       out_col, batch_head, out_height, out_width, scale,
                       stride_qd, stride_qy, stride_qx, stride_od, stride_oy,
                       stride_ox, stride_gd, stride_gy, stride_gx,
                       HEAD_DIM: tl.constexpr, STRIDE: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """Signed q, grad_out [N, BLOCK_D], lse in log2 units and delta of a
    tile of queries; stores delta = rowsum(dO * O) for the dK/dV kernel."""
    valid = (out_row < out_height) & (out_col < out_width)
    grad_out = _load_pixels(g_ptr, out_row * stride_gy + out_col * stride_gx,
                            valid, stride_gd, HEAD_DIM, BLOCK_D, False)
    out = _load_pixels(o_ptr, out_row * stride_oy + out_col * stride_ox, valid,
                       stride_od, HEAD_DIM, BLOCK_D, False)
    delta = tl.sum(grad_out.to(tl.float32) * out.to(tl.float32), axis=1)
    stat_offsets = (
        batch_head.to(tl.int64) * out_height * out_width +
        out_row * out_width + out_col)
    tl.store(delta_ptr + stat_offsets, delta, mask=valid)
    q = _load_pixels(q_ptr,
                     STRIDE * (out_row * stride_qy + out_col * stride_qx),
                     valid, stride_qd, HEAD_DIM, BLOCK_D, False)
    lse = tl.load(lse_ptr + stat_offsets, mask=valid, other=0.0)
    return _signed(q, scale), grad_out, lse * _LOG2E, delta


@triton.jit
def _slot_row_grad_query(q, grad_out, k, v, bias, lse_log2, delta, acc,
                         scale_log2):
    """acc [N, BLOCK_D] plus the dQ (unscaled) of queries q against a row
    of key slots k, v [CHUNK_W, BLOCK_D] with the additive mask ``bias``:
    dS @ k, dS = P * (dO . v - delta), P = exp2(q . k * scale_log2 -
    lse_log2)."""
    logits = _matmul_add(q, tl.trans(k), bias)
    probs = _exp2(logits * scale_log2 - lse_log2[:, None])
    grad_logits = probs * (_matmul(grad_out, tl.trans(v)) - delta[:, None])
    return _matmul_add(grad_logits.to(k.dtype), k, acc)


@_jit
def _slot_grad_query_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, g_ptr, lse_ptr, delta_ptr, dq_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_ob, stride_oh, stride_od,
        stride_oy, stride_ox, stride_gb, stride_gh, stride_gd, stride_gy,
        stride_gx, stride_dqb, stride_dqh, stride_dqd, stride_dqy, stride_dqx,
        heads, height, width, out_height, out_width, scale,
        HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILES: tl.constexpr,
        CHUNK_W: tl.constexpr, K_VECTOR: tl.constexpr, V_VECTOR: tl.constexpr):
    """Program (column of tiles, row of TILES tiles, map): delta and dQ of
    TILES (1 or 2) TILE_H x TILE_W query tiles stacked vertically, over the
    rows of key slots of :func:`_slot_forward_kernel`, whose K_VECTOR and
    V_VECTOR it takes for k and v (the loads of the loop)."""
    first_col = tl.program_id(0) * TILE_W
    first_row = tl.program_id(1) * (TILES * TILE_H)
    batch_head = tl.program_id(2)
    q_ptr += _map_offset(batch_head, heads, stride_qb, stride_qh)
    o_ptr += _map_offset(batch_head, heads, stride_ob, stride_oh)
    g_ptr += _map_offset(batch_head, heads, stride_gb, stride_gh)
    k_ptr += _map_offset(batch_head, heads, stride_kb * K_VECTOR,
                         stride_kh * K_VECTOR)
    v_ptr += _map_offset(batch_head, heads, stride_vb * V_VECTOR,
                         stride_vh * V_VECTOR)
    dq_ptr += _map_offset(batch_head, heads, stride_dqb, stride_dqh)

    (slot_offsets_k, slot_offsets_v, slot_used, query_row, out_col,
     col_bias) = _slot_tile_geometry(first_col, width, stride_kx * K_VECTOR,
                                     stride_vx * V_VECTOR, KERNEL_SIZE, STRIDE,
                                     SMALL_MAP, TILE_H, TILE_W, CHUNK_W)
    scale_log2 = _exponent_scale(scale)

    out_row0 = first_row + query_row
    q0, grad_out0, lse0, delta0 = _slot_query_inputs(
        q_ptr, o_ptr, g_ptr, lse_ptr, delta_ptr, out_row0, out_col, batch_head,
        out_height, out_width, scale, stride_qd, stride_qy, stride_qx,
        stride_od, stride_oy, stride_ox, stride_gd, stride_gy, stride_gx,
        HEAD_DIM, STRIDE, BLOCK_D)
    acc0 = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
    out_row1 = out_row0 + TILE_H
    if TILES == 2:
        q1, grad_out1, lse1, delta1 = _slot_query_inputs(
            q_ptr, o_ptr, g_ptr, lse_ptr, delta_ptr, out_row1, out_col,
            batch_head, out_height, out_width, scale, stride_qd, stride_qy,
            stride_qx, stride_od, stride_oy, stride_ox, stride_gd, stride_gy,
            stride_gx, HEAD_DIM, STRIDE, BLOCK_D)
        acc1 = acc0

    for slot_row in tl.static_range(STRIDE * (TILES * TILE_H - 1) +
                                    KERNEL_SIZE):
        k, v = _load_slot_keys_values(
            k_ptr, v_ptr, slot_row, first_row, height, stride_ky * K_VECTOR,
            stride_vy * V_VECTOR, slot_offsets_k, slot_offsets_v, slot_used,
            stride_kd, stride_vd, HEAD_DIM, KERNEL_SIZE, STRIDE, SMALL_MAP,
            BLOCK_D, K_VECTOR > 1, V_VECTOR > 1)
        if slot_row < STRIDE * (TILE_H - 1) + KERNEL_SIZE:
            acc0 = _slot_row_grad_query(
                q0, grad_out0, k, v,
                _slot_row_bias(col_bias, slot_row, query_row, KERNEL_SIZE,
                               STRIDE, TILE_H), lse0, delta0, acc0, scale_log2)
        if TILES == 2:
            if slot_row >= STRIDE * TILE_H:
                acc1 = _slot_row_grad_query(
                    q1, grad_out1, k, v,
                    _slot_row_bias(col_bias, slot_row - STRIDE * TILE_H,
                                   query_row, KERNEL_SIZE, STRIDE, TILE_H),
                    lse1, delta1, acc1, scale_log2)

    _store_query_grad(dq_ptr, acc0 * scale, stride_dqd, stride_dqy, stride_dqx,
                      STRIDE * out_row0, STRIDE * out_col,
                      (out_row0 < out_height) & (out_col < out_width), height,
                      width, HEAD_DIM, STRIDE, BLOCK_D)
    if TILES == 2:
        _store_query_grad(dq_ptr, acc1 * scale, stride_dqd, stride_dqy,
                          stride_dqx, STRIDE * out_row1, STRIDE * out_col,
                          (out_row1 < out_height) & (out_col < out_width),
                          height, width, HEAD_DIM, STRIDE, BLOCK_D)


@_jit
def _grad_key_value_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_gb, stride_gh, stride_gd,
        stride_gy, stride_gx, stride_dkb, stride_dkh, stride_dkd, stride_dky,
        stride_dkx, stride_dvb, stride_dvh, stride_dvd, stride_dvy, stride_dvx,
        heads, height, width, out_height, out_width, scale,
        HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, REGION_W: tl.constexpr,
        REGION_SIZE: tl.constexpr, BLOCK_REGION: tl.constexpr):
    """One program per (map, BLOCK_H x BLOCK_W tile of input pixels): dK and
    dV of its keys, looping in BLOCK_REGION chunks over the region of
    output pixels that can reach them (input position within pad)."""
    pad = KERNEL_SIZE // 2
    tiles = tl.cdiv(height, BLOCK_H) * tl.cdiv(width, BLOCK_W)
    batch_head = tl.program_id(0) // tiles
    first_y, first_x, key_y, key_x, key_valid = _tile_pixels(
        tl.program_id(0) % tiles, height, width, BLOCK_H, BLOCK_W)
    k = _load_channel_major(
        k_ptr + _map_offset(batch_head, heads, stride_kb, stride_kh),
        stride_kd, key_y * stride_ky + key_x * stride_kx, key_valid, HEAD_DIM,
        BLOCK_D)
    v = _load_channel_major(
        v_ptr + _map_offset(batch_head, heads, stride_vb, stride_vh),
        stride_vd, key_y * stride_vy + key_x * stride_vx, key_valid, HEAD_DIM,
        BLOCK_D)
    k, v = tl.trans(k), tl.trans(v)
    q_ptr += _map_offset(batch_head, heads, stride_qb, stride_qh)
    g_ptr += _map_offset(batch_head, heads, stride_gb, stride_gh)
    lse_ptr += batch_head.to(tl.int64) * out_height * out_width
    delta_ptr += batch_head.to(tl.int64) * out_height * out_width
    # First output row (col) whose input position is >= first - pad:
    # ceil((first - pad) / STRIDE), written with a non-negative dividend.
    shift = STRIDE * pad + STRIDE - 1 - pad
    first_row = (first_y + shift) // STRIDE - pad
    first_col = (first_x + shift) // STRIDE - pad

    grad_k = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_D], tl.float32)
    grad_v = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_D], tl.float32)
    for start in range(0, REGION_SIZE, BLOCK_REGION):
        out_row, out_col, query_valid = _region_pixels(first_row, first_col,
                                                       start, out_height,
                                                       out_width, REGION_W,
                                                       REGION_SIZE,
                                                       BLOCK_REGION)
        query_y, query_x = STRIDE * out_row, STRIDE * out_col
        q = _load_channel_major(q_ptr, stride_qd,
                                query_y * stride_qy + query_x * stride_qx,
                                query_valid, HEAD_DIM, BLOCK_D)
        grad_out = _load_channel_major(
            g_ptr, stride_gd, out_row * stride_gy + out_col * stride_gx,
            query_valid, HEAD_DIM, BLOCK_D)
        stat_offsets = out_row * out_width + out_col
        lse = tl.load(lse_ptr + stat_offsets, mask=query_valid, other=0.0)
        delta = tl.load(delta_ptr + stat_offsets, mask=query_valid, other=0.0)
        logits_t = _matmul(k, q) * scale
        multiplicity_t = _window_multiplicity(
            query_y[None, :], query_x[None, :], key_y[:, None], key_x[:, None],
            key_valid[:, None] & query_valid[None, :], height, width,
            KERNEL_SIZE, SMALL_MAP)
        probs_t = multiplicity_t * tl.exp(
            tl.where(multiplicity_t > 0, logits_t - lse[None, :],
                     _MASKED_LOGIT))
        grad_v = _matmul_add(
            probs_t.to(grad_out.dtype), tl.trans(grad_out), grad_v)
        grad_probs_t = _matmul(v, grad_out)
        grad_logits_t = probs_t * (grad_probs_t - delta[None, :])
        grad_k = _matmul_add(grad_logits_t.to(q.dtype), tl.trans(q), grad_k)

    _store_channel_major(
        dk_ptr + _map_offset(batch_head, heads, stride_dkb, stride_dkh),
        grad_k * scale, stride_dkd, key_y * stride_dky + key_x * stride_dkx,
        key_valid, HEAD_DIM, BLOCK_D)
    _store_channel_major(
        dv_ptr + _map_offset(batch_head, heads, stride_dvb, stride_dvh),
        grad_v, stride_dvd, key_y * stride_dvy + key_x * stride_dvx, key_valid,
        HEAD_DIM, BLOCK_D)


@triton.jit
def _query_row_inputs(q_ptr, g_ptr, lse_ptr, delta_ptr, out_row, out_col,
                      out_height, out_width, stride_qd, stride_qy, stride_qx,
                      stride_gd, stride_gy, stride_gx, HEAD_DIM: tl.constexpr,
                      STRIDE: tl.constexpr, BLOCK_D: tl.constexpr,
                      ON_MAP: tl.constexpr, Q_CONTIGUOUS: tl.constexpr,
                      G_CONTIGUOUS: tl.constexpr):
    """q, grad_out [CHUNK_W, BLOCK_D], lse (log2 units) and delta of the
    queries ``out_col`` of output row ``out_row``: zeros off the map, where
    a query's terms of dK and dV vanish (dO = 0, q = 0). ON_MAP: all
    queries are on the map (no masks). Q_CONTIGUOUS, G_CONTIGUOUS: q,
    grad_out head-contiguous (vector loads)."""
    if ON_MAP:
        valid = None
        # The row on the pointers: a scalar add, not one per element (which
        # the edge kernel, short of registers, keeps: it spills without).
        q_ptr += STRIDE * out_row * stride_qy
        g_ptr += out_row * stride_gy
        q_offsets = STRIDE * out_col * stride_qx
        g_offsets = out_col * stride_gx
    else:
        # A vector: a scalar condition in a mask fails in the interpreter.
        rows = tl.zeros_like(out_col) + out_row
        valid = ((out_col >= 0) & (out_col < out_width) & (rows >= 0) &
                 (rows < out_height))
        q_offsets = STRIDE * (out_row * stride_qy + out_col * stride_qx)
        g_offsets = out_row * stride_gy + out_col * stride_gx
    q = _load_pixels(q_ptr, q_offsets, valid, stride_qd, HEAD_DIM, BLOCK_D,
                     Q_CONTIGUOUS)
    grad_out = _load_pixels(g_ptr, g_offsets, valid, stride_gd, HEAD_DIM,
                            BLOCK_D, G_CONTIGUOUS)
    stat_offsets = out_row * out_width + out_col
    if ON_MAP:
        lse = tl.load(lse_ptr + stat_offsets)
        delta = tl.load(delta_ptr + stat_offsets)
    else:
        lse = tl.load(lse_ptr + stat_offsets, mask=valid, other=0.0)
        delta = tl.load(delta_ptr + stat_offsets, mask=valid, other=0.0)
    return q, grad_out, lse * _LOG2E, delta


@triton.jit
def _slot_row_grad_key_value(k, v, q, grad_out, bias, weights, lse_log2, delta,
                             grad_k, grad_v, scale_log2):
    """grad_k (unscaled) and grad_v [N, BLOCK_D] of keys k (signed), v
    plus the terms of a row of queries q, grad_out [CHUNK_W, BLOCK_D]
    under the additive mask ``bias`` [N, CHUNK_W], each term times its
    window multiplicity ``weights`` [N, CHUNK_W] (None: 1)."""
    logits = _matmul_add(k, tl.trans(q), bias)
    probs = _exp2(logits * scale_log2 - lse_log2[None, :])
    if weights is not None:
        probs *= weights
    grad_v = _matmul_add(probs.to(grad_out.dtype), grad_out, grad_v)
    grad_logits = probs * (_matmul(v, tl.trans(grad_out)) - delta[None, :])
    grad_k = _matmul_add(grad_logits.to(q.dtype), q, grad_k)
    return grad_k, grad_v


@triton.jit
def _key_row_bias(col_bias, first_offset, key_row, KERNEL_SIZE: tl.constexpr,
                  TILE_H: tl.constexpr):
    """Additive mask [N, CHUNK_W] of an interior key tile against a row of
    queries, ``first_offset`` (constexpr) the tile's first key row minus
    the queries' row (input pixels): the column band, plus the row band
    where some key row is out of the queries' reach."""
    pad: tl.constexpr = KERNEL_SIZE // 2
    bias = col_bias
    if (first_offset < -pad) | (first_offset + TILE_H - 1 > pad):
        bias = col_bias + _band(first_offset + key_row, pad)[:, None]
    return bias


@triton.jit
def _key_row_weights(col_hits, col_bias, query_y, key_y, height,
                     KERNEL_SIZE: tl.constexpr, SMALL_MAP: tl.constexpr):
    """Additive mask and window multiplicities [N, CHUNK_W] of an edge key
    tile (rows ``key_y`` [N]) against a row of queries at input row
    ``query_y``, from the tile's column hits (float32) and column mask
    [N, CHUNK_W]: reflection counted (:func:`_add_axis_hits`)."""
    row_hits = _add_axis_hits(
        tl.zeros_like(key_y), query_y, key_y, height, 1, KERNEL_SIZE,
        SMALL_MAP)
    bias = col_bias + tl.where(row_hits > 0, 0.0, _MASKED_LOGIT)[:, None]
    return bias, row_hits.to(tl.float32)[:, None] * col_hits


@triton.jit
def _key_tile_step(k, v, q, grad_out, lse_log2, delta, grad_k, grad_v,
                   scale_log2, col_bias, col_hits, first_offset, key_row,
                   key_y, query_y, height, KERNEL_SIZE: tl.constexpr,
                   SMALL_MAP: tl.constexpr, TILE_H: tl.constexpr,
                   EDGE: tl.constexpr):
    """:func:`_slot_row_grad_key_value` of a key tile (rows ``key_y``,
    ``first_offset`` the first minus the queries' input row ``query_y``)
    and a row of queries: at EDGE tiles, under the window multiplicities
    (:func:`_key_row_weights`), else under the static window mask
    (:func:`_key_row_bias`)."""
    if EDGE:
        bias, weights = _key_row_weights(col_hits, col_bias, query_y, key_y,
                                         height, KERNEL_SIZE, SMALL_MAP)
    else:
        bias = _key_row_bias(col_bias, first_offset, key_row, KERNEL_SIZE,
                             TILE_H)
        weights = None
    return _slot_row_grad_key_value(k, v, q, grad_out, bias, weights, lse_log2,
                                    delta, grad_k, grad_v, scale_log2)


@triton.jit
def _store_key_tile(dk_ptr, dv_ptr, grad_k, grad_v, key_y, key_x, key_valid,
                    scale, stride_dkd, stride_dky, stride_dkx, stride_dvd,
                    stride_dvy, stride_dvx, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Store dK (grad_k times the scale) and dV of a key tile, its keys on
    the map where ``key_valid`` (None: all)."""
    _store_channel_major(dk_ptr, grad_k * scale, stride_dkd,
                         key_y * stride_dky + key_x * stride_dkx, key_valid,
                         HEAD_DIM, BLOCK_D)
    _store_channel_major(dv_ptr, grad_v, stride_dvd,
                         key_y * stride_dvy + key_x * stride_dvx, key_valid,
                         HEAD_DIM, BLOCK_D)


@triton.jit
def _slot_key_value_grads(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_gb, stride_gh, stride_gd,
        stride_gy, stride_gx, stride_dkb, stride_dkh, stride_dkd, stride_dky,
        stride_dkx, stride_dvb, stride_dvh, stride_dvd, stride_dvy, stride_dvx,
        heads, height, width, out_height, out_width, scale, tile_col, tile_row,
        HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILES: tl.constexpr,
        CHUNK_W: tl.constexpr, EDGE: tl.constexpr, Q_VECTOR: tl.constexpr,
        G_VECTOR: tl.constexpr):
    """dK and dV of TILES (1 or 2) TILE_H x TILE_W key tiles stacked
    vertically, at column ``tile_col`` and row ``tile_row`` of such stacks,
    of map ``tl.program_id(2)``; EDGE: anywhere (masks, reflection), else
    interior (no key within pad of an edge, all queries in reach on the
    map: no masks, no reflection).

    A query reaches a key only from within pad of it, through a mirror
    image too (reflection brings an image no farther from the map's
    pixels). So the rows of CHUNK_W queries within pad of the tiles hold
    every term: shared rows loaded once, in a loop unrolled so that each
    step's window mask is known at compile time (as in
    :func:`_slot_forward_kernel`, transposed), each term weighted at edge
    tiles by how many window offsets reach the key. Every key is summed by
    one program in a fixed order: no atomics. Q_VECTOR and G_VECTOR: as
    the forward's K_VECTOR, for q and grad_out (the loads of the loop).
    """
    pad: tl.constexpr = KERNEL_SIZE // 2
    first_col = tile_col * TILE_W
    first_row = tile_row * (TILES * TILE_H)
    batch_head = tl.program_id(2)
    q_ptr += _map_offset(batch_head, heads, stride_qb * Q_VECTOR,
                         stride_qh * Q_VECTOR)
    g_ptr += _map_offset(batch_head, heads, stride_gb * G_VECTOR,
                         stride_gh * G_VECTOR)
    k_ptr += _map_offset(batch_head, heads, stride_kb, stride_kh)
    v_ptr += _map_offset(batch_head, heads, stride_vb, stride_vh)
    dk_ptr += _map_offset(batch_head, heads, stride_dkb, stride_dkh)
    dv_ptr += _map_offset(batch_head, heads, stride_dvb, stride_dvh)
    lse_ptr += batch_head.to(tl.int64) * out_height * out_width
    delta_ptr += batch_head.to(tl.int64) * out_height * out_width
    scale_log2 = _exponent_scale(scale)

    # Tile origins are multiples of STRIDE (TILE_H and TILE_W are), so the
    # first query row (column) in reach, ceil((first - pad) / STRIDE), is
    # first / STRIDE - pad // STRIDE and every offset between a key and a
    # query of the loop is known at compile time.
    key = tl.arange(0, TILE_H * TILE_W)
    key_row = key // TILE_W
    key_x = first_col + key % TILE_W
    query = tl.arange(0, CHUNK_W)
    reach = STRIDE * (pad // STRIDE)
    out_col = first_col // STRIDE - pad // STRIDE + query
    col_bias = _band((key % TILE_W)[:, None] + reach - STRIDE * query[None, :],
                     pad)

    key_y0 = first_row + key_row
    valid0 = None
    if EDGE:
        valid0 = (key_y0 < height) & (key_x < width)
    k0 = _signed(
        _load_pixels(k_ptr, key_y0 * stride_ky + key_x * stride_kx, valid0,
                     stride_kd, HEAD_DIM, BLOCK_D, False), scale)
    v0 = _load_pixels(v_ptr, key_y0 * stride_vy + key_x * stride_vx, valid0,
                      stride_vd, HEAD_DIM, BLOCK_D, False)
    grad_k0 = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
    grad_v0 = grad_k0
    key_y1 = key_y0 + TILE_H
    if TILES == 2:
        valid1 = None
        if EDGE:
            valid1 = (key_y1 < height) & (key_x < width)
        k1 = _signed(
            _load_pixels(k_ptr, key_y1 * stride_ky + key_x * stride_kx, valid1,
                         stride_kd, HEAD_DIM, BLOCK_D, False), scale)
        v1 = _load_pixels(v_ptr, key_y1 * stride_vy + key_x * stride_vx,
                          valid1, stride_vd, HEAD_DIM, BLOCK_D, False)
        grad_k1, grad_v1 = grad_k0, grad_v0

    col_hits = None
    if EDGE:
        hits = tl.zeros([TILE_H * TILE_W, CHUNK_W], tl.int32)
        hits = _add_axis_hits(hits, STRIDE * out_col[None, :], key_x[:, None],
                              width, 1, KERNEL_SIZE, SMALL_MAP)
        col_bias = tl.where(hits > 0, 0.0, _MASKED_LOGIT)
        col_hits = hits.to(tl.float32)

    for row in tl.static_range((TILES * TILE_H - 1 + pad) // STRIDE +
                               pad // STRIDE + 1):
        out_row = first_row // STRIDE - pad // STRIDE + row
        q, grad_out, lse_log2, delta = _query_row_inputs(
            q_ptr, g_ptr, lse_ptr, delta_ptr, out_row, out_col, out_height,
            out_width, stride_qd, stride_qy * Q_VECTOR, stride_qx * Q_VECTOR,
            stride_gd, stride_gy * G_VECTOR, stride_gx * G_VECTOR, HEAD_DIM,
            STRIDE, BLOCK_D, not EDGE, Q_VECTOR > 1, G_VECTOR > 1)
        # The first key row of tile 0 minus the queries' input row.
        offset = reach - STRIDE * row
        if (offset + TILE_H - 1 >= -pad) & (offset <= pad):
            grad_k0, grad_v0 = _key_tile_step(
                k0, v0, q, grad_out, lse_log2, delta, grad_k0, grad_v0,
                scale_log2, col_bias, col_hits, offset, key_row, key_y0,
                STRIDE * out_row, height, KERNEL_SIZE, SMALL_MAP, TILE_H, EDGE)
        if TILES == 2:
            if (offset + 2 * TILE_H - 1 >= -pad) & (offset + TILE_H <= pad):
                grad_k1, grad_v1 = _key_tile_step(
                    k1, v1, q, grad_out, lse_log2, delta, grad_k1, grad_v1,
                    scale_log2, col_bias, col_hits, offset + TILE_H, key_row,
                    key_y1, STRIDE * out_row, height, KERNEL_SIZE, SMALL_MAP,
                    TILE_H, EDGE)

    _store_key_tile(dk_ptr, dv_ptr, grad_k0, grad_v0, key_y0, key_x, valid0,
                    scale, stride_dkd, stride_dky, stride_dkx, stride_dvd,
                    stride_dvy, stride_dvx, HEAD_DIM, BLOCK_D)
    if TILES == 2:
        _store_key_tile(dk_ptr, dv_ptr, grad_k1, grad_v1, key_y1, key_x,
                        valid1, scale, stride_dkd, stride_dky, stride_dkx,
                        stride_dvd, stride_dvy, stride_dvx, HEAD_DIM, BLOCK_D)


@triton.jit
def _edge_tile(index, tile_cols, first_inner_col, inner_cols, first_inner_row,
               inner_rows):
    """(column, row) of the ``index``-th tile outside the interior
    rectangle of inner_cols x inner_rows tiles at (first_inner_col,
    first_inner_row): the full rows above it, the side tiles of its rows,
    then the full rows below."""
    above = first_inner_row * tile_cols
    side_cols = tile_cols - inner_cols
    sides = inner_rows * side_cols
    if index < above:
        col = index % tile_cols
        row = index // tile_cols
    elif index < above + sides:
        side = (index - above) % side_cols
        col = side + inner_cols * (side >= first_inner_col)
        row = first_inner_row + (index - above) // side_cols
    else:
        col = (index - above - sides) % tile_cols
        row = first_inner_row + inner_rows + (index - above -
                                              sides) // tile_cols
    return col, row


@_jit
def _slot_grad_key_value_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_gb, stride_gh, stride_gd,
        stride_gy, stride_gx, stride_dkb, stride_dkh, stride_dkd, stride_dky,
        stride_dkx, stride_dvb, stride_dvh, stride_dvd, stride_dvy, stride_dvx,
        heads, height, width, out_height, out_width, scale, tile_cols,
        first_inner_col, inner_cols, first_inner_row, inner_rows,
        HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILES: tl.constexpr,
        CHUNK_W: tl.constexpr, Q_VECTOR: tl.constexpr, G_VECTOR: tl.constexpr):
    """Slot dK/dV of the interior key tiles: program (column, row, map) of
    the interior rectangle (:class:`KeyTiles`)."""
    _slot_key_value_grads(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_gb, stride_gh, stride_gd,
        stride_gy, stride_gx, stride_dkb, stride_dkh, stride_dkd, stride_dky,
        stride_dkx, stride_dvb, stride_dvh, stride_dvd, stride_dvy, stride_dvx,
        heads, height, width, out_height, out_width, scale,
        first_inner_col + tl.program_id(0), first_inner_row + tl.program_id(1),
        HEAD_DIM, KERNEL_SIZE, STRIDE, SMALL_MAP, BLOCK_D, TILE_H, TILE_W,
        TILES, CHUNK_W, False, Q_VECTOR, G_VECTOR)


@_jit
def _slot_grad_key_value_edge_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_gb, stride_gh, stride_gd,
        stride_gy, stride_gx, stride_dkb, stride_dkh, stride_dkd, stride_dky,
        stride_dkx, stride_dvb, stride_dvh, stride_dvd, stride_dvy, stride_dvx,
        heads, height, width, out_height, out_width, scale, tile_cols,
        first_inner_col, inner_cols, first_inner_row, inner_rows,
        HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, TILES: tl.constexpr,
        CHUNK_W: tl.constexpr, Q_VECTOR: tl.constexpr, G_VECTOR: tl.constexpr):
    """Slot dK/dV of the edge key tiles: program (edge tile, 1, map), the
    tiles around the interior rectangle in :func:`_edge_tile`'s order."""
    tile_col, tile_row = _edge_tile(
        tl.program_id(0), tile_cols, first_inner_col, inner_cols,
        first_inner_row, inner_rows)
    _slot_key_value_grads(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        stride_qb, stride_qh, stride_qd, stride_qy, stride_qx, stride_kb,
        stride_kh, stride_kd, stride_ky, stride_kx, stride_vb, stride_vh,
        stride_vd, stride_vy, stride_vx, stride_gb, stride_gh, stride_gd,
        stride_gy, stride_gx, stride_dkb, stride_dkh, stride_dkd, stride_dky,
        stride_dkx, stride_dvb, stride_dvh, stride_dvd, stride_dvy, stride_dvx,
        heads, height, width, out_height, out_width, scale, tile_col, tile_row,
        HEAD_DIM, KERNEL_SIZE, STRIDE, SMALL_MAP, BLOCK_D, TILE_H, TILE_W,
        TILES, CHUNK_W, True, Q_VECTOR, G_VECTOR)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


class Tiling(NamedTuple):
    """Compile-time geometry of one kernel: a block_h x block_w tile and a
    region of region_size pixels (region_w per row) walked in chunks of
    block_region."""
    block_h: int
    block_w: int
    region_w: int
    region_size: int
    block_region: int

    def as_meta(self) -> dict:
        """Keyword constexpr arguments of the kernels."""
        return dict(
            BLOCK_H=self.block_h,
            BLOCK_W=self.block_w,
            REGION_W=self.region_w,
            REGION_SIZE=self.region_size,
            BLOCK_REGION=self.block_region)

    def grid(self, rows: int, cols: int, maps: int) -> Tuple[int, ...]:
        """Launch grid over maps of rows x cols tiled pixels."""
        return (maps * triton.cdiv(rows, self.block_h) *
                triton.cdiv(cols, self.block_w), )

    @property
    def loop_trips(self) -> int:
        """Iterations of the kernel's loop over the region."""
        return triton.cdiv(self.region_size, self.block_region)


class SlotTiling(NamedTuple):
    """Compile-time geometry of the key-slot forward: tiles of tile_h x
    tile_w queries, ``tiles`` of them stacked per program, against rows of
    chunk_w key slots."""
    tile_h: int
    tile_w: int
    tiles: int
    chunk_w: int

    def as_meta(self) -> dict:
        """Keyword constexpr arguments of the kernel."""
        return dict(
            TILE_H=self.tile_h,
            TILE_W=self.tile_w,
            TILES=self.tiles,
            CHUNK_W=self.chunk_w)

    def grid(self, rows: int, cols: int, maps: int) -> Tuple[int, ...]:
        """(column of tiles, row of stacked tiles, map) launch grid."""
        return (triton.cdiv(cols, self.tile_w),
                triton.cdiv(rows, self.tile_h * self.tiles), maps)

    @property
    def loop_trips(self) -> int:
        """1: the loop over slot rows is unrolled."""
        return 1


def slot_tiling(kernel_size: int, stride: int, head_dim: int,
                dtype: torch.dtype) -> SlotTiling:
    """Key-slot forward and dQ: 16 queries per tile, 2 x 8 (4 x 4 at stride
    2, which spreads the windows), against rows of stride * (tile_w - 1) +
    kernel_size slots (a chunk of 16 for 7 x 7 windows): 128 logits for 49
    at stride 1. Two tiles per program up to 32 channels share their key
    rows and set-up; wider heads take one (registers)."""
    tile_h, tile_w = (2, 8) if stride == 1 else (4, 4)
    return SlotTiling(
        tile_h, tile_w, 2 if head_dim <= 32 else 1,
        max(16, triton.next_power_of_2(stride * (tile_w - 1) + kernel_size)))


def slot_key_tiling(kernel_size: int, stride: int, head_dim: int,
                    dtype: torch.dtype) -> SlotTiling:
    """Key-slot dK/dV: 2 x 8 keys per tile (origins multiples of the
    stride), two per program up to 32 channels, against rows of the
    queries within reach of a tile row: (8 - 1 + 2 * pad) / stride + 1
    (14 for 7 x 7 windows at stride 1, in a chunk of 16)."""
    pad = kernel_size // 2
    tile_h, tile_w = 2, 8
    reach = (tile_w - 1 + pad) // stride + pad // stride + 1
    return SlotTiling(tile_h, tile_w, 2 if head_dim <= 32 else 1,
                      max(16, triton.next_power_of_2(reach)))


class KeyTiles(NamedTuple):
    """The slot dK/dV's program tiles over one map: cols x rows, of which
    the inner_cols x inner_rows at (first_col, first_row) are interior (no
    key within pad of an edge, all queries in reach on the map) and the
    others edge tiles (both counts 0 where none is interior)."""
    cols: int
    rows: int
    first_col: int
    inner_cols: int
    first_row: int
    inner_rows: int

    @property
    def edges(self) -> int:
        """Number of edge tiles."""
        return self.cols * self.rows - self.inner_cols * self.inner_rows

    def kernel_args(self) -> Tuple[int, ...]:
        """The kernel's tile_cols, first_inner_col, inner_cols,
        first_inner_row, inner_rows."""
        return (self.cols, self.first_col, self.inner_cols, self.first_row,
                self.inner_rows)

    def grid(self, maps: int, edge: bool) -> Tuple[int, int, int]:
        """Launch grid of the edge or of the interior tiles."""
        if edge:
            return (self.edges, 1, maps)
        return (self.inner_cols, self.inner_rows, maps)


def _interior_tiles(size: int, out_size: int, extent: int, queries: int,
                    kernel_size: int, stride: int) -> Tuple[int, int]:
    """(first, count) of the interior tiles of ``extent`` keys along an axis
    of ``size`` keys, ``out_size`` queries, ``queries`` of them loaded per
    tile from first / stride - pad // stride."""
    pad = kernel_size // 2
    first = -(-(pad + 1) // extent)
    last = min((size - 1 - pad - extent) // extent,
               stride * (out_size - queries + pad // stride) // extent)
    return first, max(0, last - first + 1)


def key_tiles(tiling: SlotTiling, kernel_size: int, stride: int, height: int,
              width: int) -> KeyTiles:
    """The :class:`KeyTiles` of the slot dK/dV with ``tiling`` over an
    ``height`` x ``width`` map."""
    pad = kernel_size // 2
    extent = tiling.tile_h * tiling.tiles
    query_rows = (extent - 1 + pad) // stride + pad // stride + 1
    first_col, inner_cols = _interior_tiles(width, math.ceil(width / stride),
                                            tiling.tile_w, tiling.chunk_w,
                                            kernel_size, stride)
    first_row, inner_rows = _interior_tiles(height, math.ceil(height / stride),
                                            extent, query_rows, kernel_size,
                                            stride)
    if not inner_cols * inner_rows:
        first_col = inner_cols = first_row = inner_rows = 0
    return KeyTiles(
        triton.cdiv(width, tiling.tile_w), triton.cdiv(height, extent),
        first_col, inner_cols, first_row, inner_rows)


def _operand_width(head_dim: int, dtype: torch.dtype) -> int:
    """Channel block in 16-bit units: a float32 tile counts twice."""
    return head_block(head_dim) * (2 if dtype == torch.float32 else 1)


def _tiling(tile: Tuple[int, int], region_h: int, region_w: int,
            dtype: torch.dtype) -> Tiling:
    """Tile plus a region_h x region_w region, walked in chunks of
    _REGION_CHUNK pixels, or in one power of two (at least 16, the smallest
    tl.dot size) when smaller."""
    size = region_h * region_w
    chunk = min(_REGION_CHUNK[dtype], max(16, triton.next_power_of_2(size)))
    return Tiling(tile[0], tile[1], region_w, size, chunk)


def query_tiling(kernel_size: int, stride: int, head_dim: int,
                 dtype: torch.dtype) -> Tiling:
    """Output tile and its key region (tile footprint dilated by pad).

    Stride 1: 8 x 8 queries (a 64-row tensor-core tile), 4 x 8 for
    operands of 128 16-bit channels or more (registers). Stride 2 spreads
    the footprint, so 4 x 8 (4 x 4 for kernel 7) keeps the region, and the
    logits wasted on keys out of reach, small. 16 queries is the smallest
    tl.dot.
    """
    if stride == 1:
        wide = _operand_width(head_dim, dtype) >= 128
        block_h, block_w = (4, 8) if wide else (8, 8)
    else:
        block_h, block_w = (4, 4) if kernel_size == 7 else (4, 8)
    return _tiling((block_h, block_w),
                   stride * (block_h - 1) + kernel_size,
                   stride * (block_w - 1) + kernel_size, dtype)


def key_tiling(kernel_size: int, stride: int, head_dim: int,
               dtype: torch.dtype) -> Tiling:
    """Key tile and the region of output pixels that can reach it (input
    position within pad of the tile; the largest count over alignments).

    8 x 8 keys, fewer for wide operands: the program keeps fp32 dK and dV
    accumulators for all its keys.
    """
    width = _operand_width(head_dim, dtype)
    if width <= 64:
        block_h, block_w = 8, 8
    else:
        block_h, block_w = (4, 8) if width <= 128 else (4, 4)
    return _tiling((block_h, block_w),
                   (block_h + kernel_size - 2) // stride + 1,
                   (block_w + kernel_size - 2) // stride + 1, dtype)


def head_block(head_dim: int) -> int:
    """Channel block: next power of two >= max(head_dim, 16)."""
    return triton.next_power_of_2(max(head_dim, 16))


class LaunchPlan(NamedTuple):
    """How a kernel covers one input shape: its grid size, the iterations
    of its one runtime loop (the hot loop) per program, and the share of
    its part's work (key tiles) it does."""
    programs: int
    loop_trips: int
    share: float = 1.0


# (num_warps, num_stages) pairs.
TuningConfigs = Tuple[Tuple[int, int], ...]


class KernelSpec(NamedTuple):
    """A kernel, the tiling its launcher gives it and its other constexpr
    arguments (used to compile the kernels ahead of time), whether its
    programs tile the output (queries) or the input (keys), and the
    (num_warps, num_stages) its autotuner tries at a head dim."""
    kernel: Callable
    tiling: Callable[[int, int, int, torch.dtype], Tiling]
    extra_meta: Dict[str, int]
    tiles_queries: bool
    tuning_configs: Callable[[int], TuningConfigs]
    # The slot dK/dV's interior (False) or edge (True) tiles (KeyTiles).
    edge_tiles: Optional[bool] = None
    # The configs of the variants for maps smaller than the window and of
    # those for stride 2, where they differ (where some of the others spill
    # registers); the first where both apply.
    small_map_configs: Optional[Callable[[int], TuningConfigs]] = None
    stride_two_configs: Optional[Callable[[int], TuningConfigs]] = None
    # The inputs (k, v, q, g: grad_out) its launcher always hands over
    # head-contiguous (copied if need be), which it loads as vectors.
    vector_inputs: str = ''

    def configs(self, head_dim: int, stride: int,
                small_map: bool) -> TuningConfigs:
        """The (num_warps, num_stages) the autotuner tries for the variant
        at ``head_dim`` and ``stride``, for maps smaller than the window or
        not."""
        if small_map and self.small_map_configs is not None:
            return self.small_map_configs(head_dim)
        if stride == 2 and self.stride_two_configs is not None:
            return self.stride_two_configs(head_dim)
        return self.tuning_configs(head_dim)

    def launch_plan(self, shape: Tuple[int, int, int, int,
                                       int], kernel_size: int, stride: int,
                    dtype: torch.dtype) -> LaunchPlan:
        """Grid and hot-loop trips for (B, heads, D, H, W) inputs."""
        batch, heads, head_dim, height, width = shape
        tiling = self.tiling(kernel_size, stride, head_dim, dtype)
        if self.edge_tiles is not None:
            tiles = key_tiles(tiling, kernel_size, stride, height, width)
            programs = math.prod(tiles.grid(1, self.edge_tiles))
            return LaunchPlan(programs * batch * heads, tiling.loop_trips,
                              programs / (tiles.cols * tiles.rows))
        rows, cols = height, width
        if self.tiles_queries:
            rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        return LaunchPlan(
            math.prod(tiling.grid(rows, cols, batch * heads)),
            tiling.loop_trips)


# (num_warps, num_stages) candidates of the autotuner.
TUNING_CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8,
                                                                           2))

# The configs of each kernel below leave out those that spill registers in
# some fp16 or bf16 variant (kernel_cost.py, sm_90, Triton 3.9).


def _configs(
    warps: Tuple[int, ...], stages: Tuple[int, ...] = (1, 2)) -> TuningConfigs:
    """The TUNING_CONFIGS with one of ``warps`` and of ``stages``."""
    return tuple(config for config in TUNING_CONFIGS
                 if config[0] in warps and config[1] in stages)


def _region_configs(head_dim: int) -> TuningConfigs:
    """Region kernels, 32- or 64-pixel tiles: 4 or 8 warps."""
    return _configs((4, 8))


def _region_forward_configs(head_dim: int) -> TuningConfigs:
    """Region forward: as :func:`_region_configs`, 4 warps above 64
    channels."""
    return _configs((4, )) if head_dim > 64 else _region_configs(head_dim)


def _region_key_configs(head_dim: int) -> TuningConfigs:
    """Region dK/dV: 4 or 8 warps; 4 warps in one stage only at 33-64
    channels, 8 warps above."""
    if head_dim > 64:
        return _configs((8, ))
    if head_dim > 32:
        return _configs((4, ), (1, )) + _configs((8, ))
    return _region_configs(head_dim)


def _region_small_map_query_configs(head_dim: int) -> TuningConfigs:
    """Region dQ on maps smaller than the window: 8 warps above 64
    channels, where 4 spill."""
    return _configs((8, )) if head_dim > 64 else _region_configs(head_dim)


def _region_small_map_key_configs(head_dim: int) -> TuningConfigs:
    """Region dK/dV on maps smaller than the window: 8 warps above 16
    channels, where 4 spill."""
    return _configs((8, )) if head_dim > 16 else _region_configs(head_dim)


def _slot_configs(head_dim: int) -> TuningConfigs:
    """Slot forward and dQ, 16-pixel tiles (one tensor-core tile per warp):
    1 or 2 warps up to 32 channels, where they fill the registers; 2 or 4
    up to 64; 4 or 8 above."""
    if head_dim <= 32:
        return _configs((1, 2))
    return _configs((2, 4) if head_dim <= 64 else (4, 8))


def _slot_stride_two_configs(head_dim: int) -> TuningConfigs:
    """Slot forward at stride 2: as :func:`_slot_configs`, but 2 warps at
    17-32 channels, where 1 warp spills."""
    if 16 < head_dim <= 32:
        return _configs((2, ))
    return _slot_configs(head_dim)


def _slot_query_configs(head_dim: int) -> TuningConfigs:
    """Slot dQ: as :func:`_slot_configs`, but 1 warp at 17-32 channels,
    where 2 warps spill (head-contiguous k and v)."""
    if 16 < head_dim <= 32:
        return _configs((1, ))
    return _slot_configs(head_dim)


def _slot_key_configs(head_dim: int) -> TuningConfigs:
    """Slot dK/dV, which also keeps k, v, dK and dV of its keys: 1 or 2
    warps up to 16 channels, 2 up to 32, 4 or 8 up to 64, 8 above."""
    if head_dim <= 16:
        return _configs((1, 2))
    if head_dim <= 32:
        return _configs((2, ))
    return _configs((4, 8) if head_dim <= 64 else (8, ))


def _slot_small_map_key_configs(head_dim: int) -> TuningConfigs:
    """Slot dK/dV on maps smaller than the window: as
    :func:`_slot_key_configs`, but 1 warp up to 16 channels, where 2 spill
    (edge tiles, head-contiguous q and grad_out)."""
    if head_dim <= 16:
        return _configs((1, ))
    return _slot_key_configs(head_dim)


KERNELS = {
    'forward':
    KernelSpec(_forward_kernel, query_tiling, {}, True,
               _region_forward_configs),
    'slot_forward':
    KernelSpec(
        _slot_forward_kernel,
        slot_tiling, {
            'Q_VECTOR': 1,
            'K_VECTOR': 1,
            'V_VECTOR': 1
        },
        True,
        _slot_configs,
        stride_two_configs=_slot_stride_two_configs,
        vector_inputs='kv'),
    'grad_query':
    KernelSpec(
        _grad_query_kernel,
        query_tiling, {'COMPUTE_GRAD_Q': True},
        True,
        _region_configs,
        small_map_configs=_region_small_map_query_configs),
    'slot_grad_query':
    KernelSpec(
        _slot_grad_query_kernel,
        slot_tiling, {
            'K_VECTOR': 1,
            'V_VECTOR': 1
        },
        True,
        _slot_query_configs,
        vector_inputs='kv'),
    'grad_key_value':
    KernelSpec(
        _grad_key_value_kernel,
        key_tiling, {},
        False,
        _region_key_configs,
        small_map_configs=_region_small_map_key_configs),
    'slot_grad_key_value':
    KernelSpec(
        _slot_grad_key_value_kernel,
        slot_key_tiling, {
            'Q_VECTOR': 1,
            'G_VECTOR': 1
        },
        False,
        _slot_key_configs,
        edge_tiles=False,
        vector_inputs='qg'),
    'slot_grad_key_value_edge':
    KernelSpec(
        _slot_grad_key_value_edge_kernel,
        slot_key_tiling, {
            'Q_VECTOR': 1,
            'G_VECTOR': 1
        },
        False,
        _slot_key_configs,
        edge_tiles=True,
        small_map_configs=_slot_small_map_key_configs,
        vector_inputs='qg'),
}

# 'W,S' pins the kernels to the tuning config (W, S): no autotuning, e.g. for
# a test run that compiles every variant once instead of once per config.
TUNING_CONFIG_ENV = 'ACMIX_TUNING_CONFIG'


def tuning_configs(device: torch.device) -> Tuple[Tuple[int, int], ...]:
    """The TUNING_CONFIGS this Triton can compile for ``device``.

    Triton 2.2 to 3.1 abort the process (an assertion in the compiler, out
    of reach of any exception handler) on some of the kernels with 8 warps
    for Hopper (sm_90) and newer GPUs; fixed in Triton 3.2.
    """
    if (device.type == 'cuda' and (2, 2) <= _TRITON_VERSION < (3, 2)
            and torch.cuda.get_device_capability(device)[0] >= 9):
        return tuple(config for config in TUNING_CONFIGS if config[0] != 8)
    return TUNING_CONFIGS


def _compilable(configs: list, *args, **kwargs) -> list:
    """Autotuner config pruning: those of :func:`tuning_configs` for the
    current GPU (the launch's); where that leaves none (a kernel tuned over
    8 warps only, on Triton 2.2 to 3.1 for Hopper), the same stages with 4
    warps, which compile there (and may spill)."""
    allowed = tuning_configs(torch.device('cuda', torch.cuda.current_device()))
    kept = [
        config for config in configs
        if (config.num_warps, config.num_stages) in allowed
    ]
    return kept or [
        triton.Config({}, num_warps=4, num_stages=config.num_stages)
        for config in configs
    ]


def _autotuned(spec: KernelSpec, configs: TuningConfigs):
    """``spec.kernel`` autotuned over ``configs`` on GPUs, keyed by what
    selects its compiled variant: head dim, kernel size, stride, whether the
    map is smaller than the window, its extra constexprs, and the dtypes;
    the interpreter runs the kernel as is."""
    if interpreter_active():
        return spec.kernel
    configs = [
        triton.Config({}, num_warps=warps, num_stages=stages)
        for warps, stages in configs
    ]
    key = ['HEAD_DIM', 'KERNEL_SIZE', 'STRIDE', 'SMALL_MAP', *spec.extra_meta]
    return triton.autotune(
        configs, key=key, prune_configs_by={'early_config_prune':
                                            _compilable})(
                                                spec.kernel)


# Autotuned kernels by name and configs tried, made at their first launch:
# Triton 3.2 and 3.3 need a GPU driver to make an autotuner.
_AUTOTUNED: Dict[Tuple[str, TuningConfigs], Callable] = {}


def _autotuned_kernel(name: str, head_dim: int, stride: int,
                      small_map: bool) -> Callable:
    """Kernel ``name`` autotuned for ``head_dim`` and ``stride``, on maps
    smaller than the window or not (made once per set of configs it
    tries)."""
    configs = KERNELS[name].configs(head_dim, stride, small_map)
    key = (name, configs)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = _autotuned(KERNELS[name], configs)
    return _AUTOTUNED[key]


# The tuning config each kernel last ran with (None: interpreter).
_LAST_CONFIGS: Dict[str, Optional[Tuple[int, int]]] = {}


def pinned_tuning_config() -> Optional[Tuple[int, int]]:
    """The (num_warps, num_stages) that ``ACMIX_TUNING_CONFIG`` pins, or
    None (autotune)."""
    text = os.environ.get(TUNING_CONFIG_ENV, '').strip()
    if not text:
        return None
    try:
        config = tuple(int(part) for part in text.split(','))
    except ValueError:
        config = None
    if config not in TUNING_CONFIGS:
        choices = ', '.join(f"'{w},{s}'" for w, s in TUNING_CONFIGS)
        raise ValueError(f'{TUNING_CONFIG_ENV} must be one of {choices} '
                         f'(num_warps,num_stages), got {text!r}')
    return config


def last_tuning_configs() -> Dict[str, Optional[Tuple[int, int]]]:
    """(num_warps, num_stages) each kernel ran with at its last launch (the
    autotuner's choice unless pinned); None under the interpreter."""
    return dict(_LAST_CONFIGS)


class KernelError(RuntimeError):
    """A fused kernel failed to compile or launch (out of memory aside).

    ``variant`` names the compiled variant (see :func:`variant_key`), so
    that callers can stop trying it.
    """

    def __init__(self, message: str, variant: tuple) -> None:
        super().__init__(message)
        self.variant = variant


def _variant(q: Tensor, meta: dict) -> tuple:
    """Device, dtype and the shape constexprs (:func:`shape_meta`): what
    selects the compiled kernels."""
    return (str(q.device), q.dtype, meta['HEAD_DIM'], meta['KERNEL_SIZE'],
            meta['STRIDE'], meta['SMALL_MAP'])


def variant_key(q: Tensor, kernel_size: int, stride: int) -> tuple:
    """The compiled variant (B, heads, D, H, W) inputs ``q`` would use, as
    in :attr:`KernelError.variant`."""
    return _variant(q, _shape_meta(q, kernel_size, stride))


def _launch(name: str,
            q: Tensor,
            grid: tuple,
            *args,
            config: Optional[Tuple[int, int]] = None,
            **meta) -> None:
    """Launch kernel ``name`` on ``q``'s device with ``config`` (num_warps,
    num_stages), else the pinned config, else the autotuner's choice.

    Raises:
        ValueError: a pinned or given config this Triton cannot compile
            for the GPU (:func:`tuning_configs`).
        KernelError: the kernel failed to compile or launch; a CUDA
            out-of-memory error passes through unchanged.
    """
    config = config or pinned_tuning_config()
    if config is not None and config not in tuning_configs(q.device):
        raise ValueError(
            f'tuning config {config} would crash the compiler of Triton '
            f'{triton.__version__} on this GPU; use one of '
            f'{tuning_configs(q.device)}')
    try:
        with _device_guard(q):
            if config is None:
                kernel = _autotuned_kernel(name, meta['HEAD_DIM'],
                                           meta['STRIDE'], meta['SMALL_MAP'])
                kernel[grid](*args, **meta)
                best = getattr(kernel, 'best_config', None)
                _LAST_CONFIGS[name] = best and (best.num_warps,
                                                best.num_stages)
            else:
                KERNELS[name].kernel[grid](
                    *args, **meta, num_warps=config[0], num_stages=config[1])
                _LAST_CONFIGS[name] = config
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:
        device = torch.cuda.get_device_name(q.device) if q.is_cuda \
            else str(q.device)
        raise KernelError(
            f'the fused {name} kernel failed to compile or launch on '
            f'{device} (Triton {triton.__version__}; {q.dtype}, head_dim '
            f'{meta["HEAD_DIM"]}, kernel_size {meta["KERNEL_SIZE"]}, stride '
            f'{meta["STRIDE"]}): {type(error).__name__}: {error}',
            _variant(q, meta)) from error


def _strides(tensor: Tensor) -> Tuple[int, ...]:
    """The 5 strides of a (B, heads, D, H, W) tensor, in elements."""
    return tuple(tensor.stride())


def _device_guard(tensor: Tensor):
    """Make ``tensor``'s GPU current while launching (no-op on CPU)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def check_inputs(q: Tensor, k: Tensor, v: Tensor, kernel_size: int,
                 stride: int) -> None:
    """Raise ValueError unless the fused kernels support these arguments."""
    for name, tensor in (('q', q), ('k', k), ('v', v)):
        if tensor.dim() != 5:
            raise ValueError(f'{name} must be 5-D (B, heads, D, H, W), got '
                             f'shape {tuple(tensor.shape)}')
    if not q.shape == k.shape == v.shape:
        raise ValueError('q, k and v must have the same shape, got '
                         f'{tuple(q.shape)}, {tuple(k.shape)}, '
                         f'{tuple(v.shape)}')
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError('q, k and v must have the same dtype, got '
                         f'{q.dtype}, {k.dtype}, {v.dtype}')
    if not q.device == k.device == v.device:
        raise ValueError('q, k and v must be on the same device, got '
                         f'{q.device}, {k.device}, {v.device}')
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f'dtype {q.dtype} is not supported; use float32, '
                         'float16 or bfloat16')
    head_dim = q.shape[2]
    if (head_dim < MIN_HEAD_DIM or head_dim > MAX_HEAD_DIM
            or head_dim % HEAD_DIM_MULTIPLE):
        raise ValueError(f'head_dim (dim 2) must be a multiple of '
                         f'{HEAD_DIM_MULTIPLE} in [{MIN_HEAD_DIM}, '
                         f'{MAX_HEAD_DIM}], got {head_dim}')
    if q.shape[3] < 1 or q.shape[4] < 1:
        raise ValueError(f'H and W must be >= 1, got {tuple(q.shape[3:])}')
    if not isinstance(kernel_size, int) or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be an odd int, got {kernel_size}')
    if kernel_size not in SUPPORTED_KERNEL_SIZES:
        raise ValueError(f'kernel_size must be one of '
                         f'{SUPPORTED_KERNEL_SIZES}, got {kernel_size}')
    if not isinstance(stride, int) or stride not in SUPPORTED_STRIDES:
        raise ValueError(f'stride must be one of {SUPPORTED_STRIDES}, got '
                         f'{stride}')
    if interpreter_active():
        if q.dtype == torch.bfloat16:
            raise ValueError('bfloat16 is not supported by the Triton '
                             'interpreter (TRITON_INTERPRET=1), which runs '
                             'kernels with numpy; use float16 or float32')
    elif not q.is_cuda:
        raise ValueError(f'the Triton kernels need CUDA tensors, got device '
                         f'{q.device}; set TRITON_INTERPRET=1 before import '
                         'to run them on CPU')


def shape_meta(head_dim: int, kernel_size: int, stride: int,
               small_map: bool) -> dict:
    """Constexpr arguments shared by all kernels. SMALL_MAP (a side of at
    most pad pixels) selects the general reflection count, so tiny maps
    add one compiled variant, not one per size."""
    return dict(
        HEAD_DIM=head_dim,
        KERNEL_SIZE=kernel_size,
        STRIDE=stride,
        SMALL_MAP=small_map,
        BLOCK_D=head_block(head_dim))


def _shape_meta(q: Tensor, kernel_size: int, stride: int) -> dict:
    """:func:`shape_meta` of (B, heads, D, H, W) inputs ``q``."""
    head_dim, height, width = q.shape[2:]
    return shape_meta(head_dim, kernel_size, stride,
                      min(height, width) <= kernel_size // 2)


class KernelSet(NamedTuple):
    """The KERNELS of one design: forward, dQ (and delta), dK/dV (of the
    interior key tiles, where the design splits them) and dK/dV of the
    edge key tiles (None: no split)."""
    forward: str
    grad_query: str
    grad_key_value: str
    edge_grad_key_value: Optional[str] = None

    def names(self) -> Tuple[str, ...]:
        """The design's kernels."""
        return tuple(name for name in self if name is not None)


# 'slot': rows of reflection-padded key slots (or, for dK/dV, of queries)
# with static window masks; 'region': a tile's whole key (query) region
# with reflection counted per logit.
KERNEL_DESIGNS = {
    'slot':
    KernelSet('slot_forward', 'slot_grad_query', 'slot_grad_key_value',
              'slot_grad_key_value_edge'),
    'region':
    KernelSet('forward', 'grad_query', 'grad_key_value'),
}
# Names the design to run whatever the shape (benchmarks, tests); unset,
# :func:`kernel_design` decides.
KERNEL_DESIGN_ENV = 'ACMIX_KERNEL_DESIGN'
# The slot kernels unroll their loops over rows, which Triton 2.1's compiler
# takes tens of minutes to lower (if it finishes); Triton 3.3 compiles them in
# seconds, 3.0 to 3.2 are untried.
SLOT_DESIGN_MIN_TRITON = (3, 3)


def available_designs() -> Tuple[str, ...]:
    """The KERNEL_DESIGNS the installed Triton compiles: 'region' always,
    'slot' from Triton 3.3."""
    if _TRITON_VERSION >= SLOT_DESIGN_MIN_TRITON:
        return tuple(KERNEL_DESIGNS)
    return ('region', )


def available_kernels() -> Tuple[str, ...]:
    """Names of the KERNELS of :func:`available_designs`."""
    return tuple(name for design in available_designs()
                 for name in KERNEL_DESIGNS[design].names())


def kernel_design(head_dim: int, stride: int) -> str:
    """The kernel design for ``head_dim`` and ``stride``, or the one
    ``ACMIX_KERNEL_DESIGN`` names.

    'slot' (128 logits per query for 49 at stride 1) up to 32 channels at
    stride 1, with Triton 3.3 or newer (:func:`available_designs`).
    'region' (256 logits for 49) for wider heads, where a 2 x 8 tile
    reloads its rows too often, and at stride 2, where 4 x 4 slot tiles
    compute 208 logits for 49.
    """
    forced = os.environ.get(KERNEL_DESIGN_ENV, '').strip()
    if forced:
        if forced not in available_designs():
            raise ValueError(f'{KERNEL_DESIGN_ENV} must be one of '
                             f'{available_designs()} with Triton '
                             f'{triton.__version__} (slot: Triton >= 3.3), '
                             f'got {forced!r}')
        return forced
    if 'slot' in available_designs() and stride == 1 and head_dim <= 32:
        return 'slot'
    return 'region'


def _vector_width(tensor: Tensor) -> int:
    """Elements in 16 bytes if ``tensor`` (B, heads, D, H, W) has channel
    stride 1 and is 16-byte aligned in its other strides and its data
    (head-contiguous maps, e.g. the layers' keys), else 1."""
    width = 16 // tensor.element_size()
    batch, head, channel, row, col = tensor.stride()
    if (channel != 1 or any(s % width for s in (batch, head, row, col))
            or tensor.data_ptr() % 16):
        return 1
    return width


def _vector_loadable(x: Tensor) -> Tensor:
    """``x`` (B, heads, D, H, W) itself if the slot kernels can load it as
    vectors, else a head-contiguous copy: the rows they load in their loops
    (k and v of the forward and dQ, q and grad_out of dK/dV) are fewer
    instructions and registers as vectors, and the forward's two passes
    over channel-major keys and values would spill."""
    if _vector_width(x) > 1:
        return x
    return empty_head_contiguous(x).copy_(x)


def _vector_loads(**tensors: Tensor) -> Tuple[dict, Tuple[int, ...]]:
    """The {NAME}_VECTOR constexprs of a slot kernel for ``tensors`` by
    name (:func:`_vector_width`: one 16-byte vector per pixel where it
    allows) and their strides in those units, in order."""
    meta, strides = {}, ()
    for name, tensor in tensors.items():
        vector = _vector_width(tensor)
        meta[f'{name.upper()}_VECTOR'] = vector
        strides += tuple(stride // vector for stride in _strides(tensor))
    return meta, strides


def local_attention_forward(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kernel_size: int,
        stride: int = 1,
        scale: float = 1.0,
        config: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, Tensor]:
    """Fused forward of the local attention.

    Args:
        q, k, v: (B, heads, D, H, W), any strides, one dtype and device.
        kernel_size: window size (3, 5 or 7).
        stride: query stride (1 or 2).
        scale: factor applied to the logits q . k.
        config: (num_warps, num_stages) to launch with instead of the
            pinned or autotuned config.

    Returns:
        out: (B, heads, D, ceil(H / stride), ceil(W / stride)), v's dtype.
        lse: (B * heads, Hq, Wq) float32 log-sum-exp of the weighted logits.

    Raises:
        ValueError: unsupported inputs (:func:`check_inputs`).
        KernelError: the kernel failed to compile or launch.
    """
    check_inputs(q, k, v, kernel_size, stride)
    batch, heads, head_dim, height, width = q.shape
    out_height = math.ceil(height / stride)
    out_width = math.ceil(width / stride)
    out = torch.empty((batch, heads, head_dim, out_height, out_width),
                      dtype=v.dtype,
                      device=v.device)
    lse = torch.empty((batch * heads, out_height, out_width),
                      dtype=torch.float32,
                      device=v.device)
    if out.numel() == 0:
        return out, lse
    name = KERNEL_DESIGNS[kernel_design(head_dim, stride)].forward
    tiling = KERNELS[name].tiling(kernel_size, stride, head_dim, q.dtype)
    input_strides = _strides(q) + _strides(k) + _strides(v)
    extra_meta = {}
    if name == 'slot_forward':
        k, v = _vector_loadable(k), _vector_loadable(v)
        extra_meta, input_strides = _vector_loads(q=q, k=k, v=v)
    _launch(
        name,
        q,
        tiling.grid(out_height, out_width, batch * heads),
        q,
        k,
        v,
        out,
        lse,
        *input_strides,
        *_strides(out),
        heads,
        height,
        width,
        out_height,
        out_width,
        float(scale),
        config=config,
        **_shape_meta(q, kernel_size, stride),
        **tiling.as_meta(),
        **extra_meta)
    return out, lse


def local_attention_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    kernel_size: int,
    stride: int,
    scale: float,
    need_grad_q: bool = True,
    need_grad_kv: bool = True,
    config: Optional[Tuple[int, int]] = None
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Fused, deterministic backward of :func:`local_attention_forward`.

    Args:
        grad_out: (B, heads, D, Hq, Wq) gradient of ``out``, any strides.
        q, k, v: the forward's inputs, (B, heads, D, H, W).
        out, lse: the forward's results.
        kernel_size, stride, scale: the forward's arguments.
        need_grad_q: compute dQ.
        need_grad_kv: compute dK and dV.
        config: as in :func:`local_attention_forward`, for both kernels.

    Returns:
        (dq, dk, dv): contiguous (B, heads, D, H, W) in q's dtype; None where
        not requested.

    Raises:
        KernelError: a kernel failed to compile or launch.
    """
    batch, heads, head_dim, height, width = q.shape
    out_height, out_width = out.shape[-2:]

    def new_grad(needed: bool) -> Optional[Tensor]:
        """Uninitialised (B, heads, D, H, W) gradient, if needed."""
        return torch.empty(q.shape, dtype=q.dtype, device=q.device) \
            if needed else None

    grad_q = new_grad(need_grad_q)
    grad_k, grad_v = new_grad(need_grad_kv), new_grad(need_grad_kv)
    if q.numel() == 0 or not (need_grad_q or need_grad_kv):
        return grad_q, grad_k, grad_v
    maps = batch * heads
    kernels = KERNEL_DESIGNS[kernel_design(head_dim, stride)]
    common = _shape_meta(q, kernel_size, stride)
    sizes = (heads, height, width, out_height, out_width, float(scale))
    delta = torch.empty_like(lse)
    # Without dQ the region kernel only writes delta: any pointer stands in.
    name, extra_meta = 'grad_query', dict(COMPUTE_GRAD_Q=need_grad_q)
    keys, values = k, v
    key_value_strides = _strides(k) + _strides(v)
    if need_grad_q and kernels.grad_query == 'slot_grad_query':
        name = 'slot_grad_query'
        keys, values = _vector_loadable(k), _vector_loadable(v)
        extra_meta, key_value_strides = _vector_loads(k=keys, v=values)
    tiling = KERNELS[name].tiling(kernel_size, stride, head_dim, q.dtype)
    _launch(
        name,
        q,
        tiling.grid(out_height, out_width, maps),
        q,
        keys,
        values,
        out,
        grad_out,
        lse,
        delta,
        grad_q if need_grad_q else delta,
        *_strides(q),
        *key_value_strides,
        *_strides(out),
        *_strides(grad_out),
        *(_strides(grad_q) if need_grad_q else (0, ) * 5),
        *sizes,
        config=config,
        **common,
        **tiling.as_meta(),
        **extra_meta)
    if not need_grad_kv:
        return grad_q, grad_k, grad_v
    name = kernels.grad_key_value
    tiling = KERNELS[name].tiling(kernel_size, stride, head_dim, q.dtype)
    launches = [(name, tiling.grid(height, width, maps), ())]
    if kernels.edge_grad_key_value:
        tiles = key_tiles(tiling, kernel_size, stride, height, width)
        launches = [(name, tiles.grid(maps, False), tiles.kernel_args()),
                    (kernels.edge_grad_key_value, tiles.grid(maps, True),
                     tiles.kernel_args())]
    queries, grads_out, extra_meta = q, grad_out, {}
    query_strides, grad_out_strides = _strides(q), _strides(grad_out)
    if name == 'slot_grad_key_value':
        queries, grads_out = _vector_loadable(q), _vector_loadable(grad_out)
        extra_meta, query_strides = _vector_loads(q=queries)
        grad_out_meta, grad_out_strides = _vector_loads(g=grads_out)
        extra_meta.update(grad_out_meta)
    for name, grid, tile_args in launches:
        if not math.prod(grid):
            continue
        _launch(
            name,
            q,
            grid,
            queries,
            k,
            v,
            grads_out,
            lse,
            delta,
            grad_k,
            grad_v,
            *query_strides,
            *_strides(k),
            *_strides(v),
            *grad_out_strides,
            *_strides(grad_k),
            *_strides(grad_v),
            *sizes,
            *tile_args,
            config=config,
            **common,
            **tiling.as_meta(),
            **extra_meta)
    return grad_q, grad_k, grad_v
