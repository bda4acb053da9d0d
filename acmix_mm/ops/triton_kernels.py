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
import functools
import math
import os
import re
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reflection import reflect_index

SUPPORTED_KERNEL_SIZES = (3, 5, 7)
SUPPORTED_STRIDES = (1, 2)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_HEAD_DIM, MAX_HEAD_DIM, HEAD_DIM_MULTIPLE = 8, 128, 8

_TRUE_WORDS = ('1', 'true', 'on', 'yes', 'y')
_INTERPRETER_ACTIVE = os.environ.get('TRITON_INTERPRET',
                                     '').strip().lower() in _TRUE_WORDS

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


@triton.jit
def _exp2(x):
    """2 ** x (one MUFU.EX2 on the GPU)."""
    if _TRITON_3:
        return tl.exp2(x)
    else:
        return tl.math.exp2(x)


@triton.jit
def _log2(x):
    """log2(x)."""
    if _TRITON_3:
        return tl.log2(x)
    else:
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
def _channel_major(channel_stride, pixel_offsets, pixel_valid,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets and mask of a [BLOCK_D, N] tile of N pixels (channels beyond
    HEAD_DIM and invalid pixels masked)."""
    channels = tl.arange(0, BLOCK_D)
    offsets = channels[:, None] * channel_stride + pixel_offsets[None, :]
    mask = (channels < HEAD_DIM)[:, None] & pixel_valid[None, :]
    return offsets, mask


@triton.jit
def _load_channel_major(ptr, channel_stride, pixel_offsets, pixel_valid,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_D, N] tile of N pixels (zeros beyond HEAD_DIM / off-map)."""
    offsets, mask = _channel_major(channel_stride, pixel_offsets, pixel_valid,
                                   HEAD_DIM, BLOCK_D)
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_channel_major(ptr, values, channel_stride, pixel_offsets,
                         pixel_valid, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """Store a [N, BLOCK_D] tile (pixels x channels) to N pixels."""
    offsets, mask = _channel_major(channel_stride, pixel_offsets, pixel_valid,
                                   HEAD_DIM, BLOCK_D)
    tl.store(
        ptr + offsets, tl.trans(values).to(ptr.dtype.element_ty), mask=mask)


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
        SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr, TILE_H: tl.constexpr,
        TILE_W: tl.constexpr, LOOP_ROWS: tl.constexpr, CHUNK_W: tl.constexpr):
    """One program per (map, TILE_H x TILE_W output tile): out and lse of
    its queries. The loop walks the LOOP_ROWS rows of key slots (padded
    positions) that the tile's windows cover, CHUNK_W slots each."""
    pad = KERNEL_SIZE // 2
    tiles = tl.cdiv(out_height, TILE_H) * tl.cdiv(out_width, TILE_W)
    batch_head = tl.program_id(0) // tiles
    first_row, first_col, out_row, out_col, query_valid = _tile_pixels(
        tl.program_id(0) % tiles, out_height, out_width, TILE_H, TILE_W)
    q = _load_channel_major(
        q_ptr + _map_offset(batch_head, heads, stride_qb, stride_qh),
        stride_qd, STRIDE * (out_row * stride_qy + out_col * stride_qx),
        query_valid, HEAD_DIM, BLOCK_D)
    q = tl.trans(q)
    k_ptr += _map_offset(batch_head, heads, stride_kb, stride_kh)
    v_ptr += _map_offset(batch_head, heads, stride_vb, stride_vh)

    # Slot s of a row is padded column STRIDE * first_col - pad + s; query
    # i's window covers slots STRIDE * (i % TILE_W) + [0, KERNEL_SIZE).
    slot = tl.arange(0, CHUNK_W)
    key_x = _reflect(STRIDE * first_col - pad + slot, width, pad, SMALL_MAP)
    slot_used = slot < STRIDE * (TILE_W - 1) + KERNEL_SIZE
    query = tl.arange(0, TILE_H * TILE_W)
    col_mask = _band(slot[None, :] - STRIDE * (query % TILE_W)[:, None] - pad,
                     pad)
    query_row = STRIDE * (query // TILE_W)
    scale_log2 = scale * 1.4426950408889634

    row_max = tl.full([TILE_H * TILE_W], _MASKED_LOGIT, tl.float32)
    row_sum = tl.zeros([TILE_H * TILE_W], tl.float32)
    acc = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
    for slot_row in range(LOOP_ROWS):
        key_y = _reflect(STRIDE * first_row - pad + slot_row, height, pad,
                         SMALL_MAP)
        k = _load_channel_major(k_ptr + key_y * stride_ky, stride_kd,
                                key_x * stride_kx, slot_used, HEAD_DIM,
                                BLOCK_D)
        v = _load_channel_major(v_ptr + key_y * stride_vy, stride_vd,
                                key_x * stride_vx, slot_used, HEAD_DIM,
                                BLOCK_D)
        # log2-scaled logits: exp2 of them is the softmax weight.
        logits = (
            _matmul(q, k) * scale_log2 + col_mask +
            _band(slot_row - query_row - pad, pad)[:, None])
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        rescale = _exp2(row_max - new_max)
        weights = _exp2(logits - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(weights, axis=1)
        acc = _matmul_add(
            weights.to(v.dtype), tl.trans(v), acc * rescale[:, None])
        row_max = new_max

    row_sum = tl.where(query_valid, row_sum, 1.0)
    _store_channel_major(
        out_ptr + _map_offset(batch_head, heads, stride_ob, stride_oh),
        acc * (1.0 / row_sum)[:, None], stride_od,
        out_row * stride_oy + out_col * stride_ox, query_valid, HEAD_DIM,
        BLOCK_D)
    lse_offsets = (
        batch_head.to(tl.int64) * out_height * out_width +
        out_row * out_width + out_col)
    tl.store(
        lse_ptr + lse_offsets, (row_max + _log2(row_sum)) * _LN2,
        mask=query_valid)


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
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, LOOP_ROWS: tl.constexpr,
        CHUNK_W: tl.constexpr, COMPUTE_GRAD_Q: tl.constexpr):
    """One program per (map, output tile), as the forward: delta =
    rowsum(dO * O) of its queries (stored for the dK/dV kernel) and, if
    COMPUTE_GRAD_Q, their dQ = scale * sum_slots P * (dP - delta) * K."""
    pad = KERNEL_SIZE // 2
    tiles = tl.cdiv(out_height, TILE_H) * tl.cdiv(out_width, TILE_W)
    batch_head = tl.program_id(0) // tiles
    first_row, first_col, out_row, out_col, query_valid = _tile_pixels(
        tl.program_id(0) % tiles, out_height, out_width, TILE_H, TILE_W)
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
        scale_log2 = scale * 1.4426950408889634
        lse_log2 = tl.load(
            lse_ptr + stat_offsets, mask=query_valid,
            other=0.0) * 1.4426950408889634
        k_ptr += _map_offset(batch_head, heads, stride_kb, stride_kh)
        v_ptr += _map_offset(batch_head, heads, stride_vb, stride_vh)
        slot = tl.arange(0, CHUNK_W)
        key_x = _reflect(STRIDE * first_col - pad + slot, width, pad,
                         SMALL_MAP)
        slot_used = slot < STRIDE * (TILE_W - 1) + KERNEL_SIZE
        query = tl.arange(0, TILE_H * TILE_W)
        col_mask = _band(
            slot[None, :] - STRIDE * (query % TILE_W)[:, None] - pad, pad)
        query_row = STRIDE * (query // TILE_W)
        acc = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        for slot_row in range(LOOP_ROWS):
            key_y = _reflect(STRIDE * first_row - pad + slot_row, height, pad,
                             SMALL_MAP)
            k = _load_channel_major(k_ptr + key_y * stride_ky, stride_kd,
                                    key_x * stride_kx, slot_used, HEAD_DIM,
                                    BLOCK_D)
            v = _load_channel_major(v_ptr + key_y * stride_vy, stride_vd,
                                    key_x * stride_vx, slot_used, HEAD_DIM,
                                    BLOCK_D)
            logits = (
                _matmul(q, k) * scale_log2 + col_mask +
                _band(slot_row - query_row - pad, pad)[:, None])
            probs = _exp2(logits - lse_log2[:, None])
            grad_probs = _matmul(grad_out, v)
            grad_logits = probs * (grad_probs - delta[:, None])
            acc = _matmul_add(grad_logits.to(k.dtype), tl.trans(k), acc)
        _store_query_grad(
            dq_ptr + _map_offset(batch_head, heads, stride_dqb, stride_dqh),
            acc * scale, stride_dqd, stride_dqy, stride_dqx, query_y, query_x,
            query_valid, height, width, HEAD_DIM, STRIDE, BLOCK_D)


@_jit
def _grad_key_value_kernel(
        q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
        dk_slots_ptr, dv_slots_ptr, stride_qb, stride_qh, stride_qd, stride_qy,
        stride_qx, stride_kb, stride_kh, stride_kd, stride_ky, stride_kx,
        stride_vb, stride_vh, stride_vd, stride_vy, stride_vx, stride_gb,
        stride_gh, stride_gd, stride_gy, stride_gx, stride_dkb, stride_dkh,
        stride_dkd, stride_dky, stride_dkx, stride_dvb, stride_dvh, stride_dvd,
        stride_dvy, stride_dvx, heads, height, width, out_height, out_width,
        scale, HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        STRIDE: tl.constexpr, SMALL_MAP: tl.constexpr, BLOCK_D: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, LOOP_ROWS: tl.constexpr,
        CHUNK_W: tl.constexpr):
    """One program per (map, TILE_H x TILE_W tile of key slots, the
    positions of the reflection-padded map): dK and dV of its slots, looping
    over the LOOP_ROWS rows of queries whose windows can cover them, CHUNK_W
    queries each.

    A slot whose source pixel has no other slot (no mirror image) stores
    its gradients in dk_ptr / dv_ptr. The others store float32 gradients
    at their padded position in dk_slots_ptr / dv_slots_ptr, contiguous
    (B * heads, HEAD_DIM, H + 2 * pad, W + 2 * pad), which the launcher
    sums into their sources (:func:`_fold_mirror_images`).
    """
    pad = KERNEL_SIZE // 2
    padded_height = height + 2 * pad
    padded_width = width + 2 * pad
    tiles = tl.cdiv(padded_height, TILE_H) * tl.cdiv(padded_width, TILE_W)
    batch_head = tl.program_id(0) // tiles
    first_row, first_col, slot_row, slot_col, slot_valid = _tile_pixels(
        tl.program_id(0) % tiles, padded_height, padded_width, TILE_H, TILE_W)
    key_y = _reflect(slot_row - pad, height, pad, SMALL_MAP)
    key_x = _reflect(slot_col - pad, width, pad, SMALL_MAP)
    k = _load_channel_major(
        k_ptr + _map_offset(batch_head, heads, stride_kb, stride_kh),
        stride_kd, key_y * stride_ky + key_x * stride_kx, slot_valid, HEAD_DIM,
        BLOCK_D)
    v = _load_channel_major(
        v_ptr + _map_offset(batch_head, heads, stride_vb, stride_vh),
        stride_vd, key_y * stride_vy + key_x * stride_vx, slot_valid, HEAD_DIM,
        BLOCK_D)
    k, v = tl.trans(k), tl.trans(v)
    q_ptr += _map_offset(batch_head, heads, stride_qb, stride_qh)
    g_ptr += _map_offset(batch_head, heads, stride_gb, stride_gh)
    stats_base = batch_head.to(tl.int64) * out_height * out_width

    # The first output row (col) whose window reaches the tile's first slot
    # row (col), at position first - pad: ceil((first - 2 * pad) / STRIDE),
    # written with a non-negative dividend.
    shift = 2 * pad * STRIDE + STRIDE - 1
    first_out_row = (first_row - 2 * pad + shift) // STRIDE - 2 * pad
    first_out_col = (first_col - 2 * pad + shift) // STRIDE - 2 * pad
    query = tl.arange(0, CHUNK_W)
    out_col = first_out_col + query
    col_valid = (out_col >= 0) & (out_col < out_width)
    # Slot position minus query centre, per (slot, query) and per row.
    col_mask = _band(slot_col[:, None] - pad - STRIDE * out_col[None, :], pad)
    col_mask = tl.where(col_valid[None, :], col_mask, _MASKED_LOGIT)
    scale_log2 = scale * 1.4426950408889634

    grad_k = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
    grad_v = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
    for row in range(LOOP_ROWS):
        out_row = first_out_row + row
        # A vector: a scalar condition in a mask fails in the interpreter.
        out_rows = tl.full([CHUNK_W], 0, tl.int32) + out_row
        query_valid = col_valid & (out_rows >= 0) & (out_rows < out_height)
        q = _load_channel_major(q_ptr + STRIDE * out_row * stride_qy,
                                stride_qd, STRIDE * out_col * stride_qx,
                                query_valid, HEAD_DIM, BLOCK_D)
        grad_out = _load_channel_major(g_ptr + out_row * stride_gy, stride_gd,
                                       out_col * stride_gx, query_valid,
                                       HEAD_DIM, BLOCK_D)
        stat_offsets = stats_base + out_row * out_width + out_col
        lse_log2 = tl.load(
            lse_ptr + stat_offsets, mask=query_valid,
            other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptr + stat_offsets, mask=query_valid, other=0.0)
        logits_t = (
            _matmul(k, q) * scale_log2 + col_mask +
            _band(slot_row - pad - STRIDE * out_row, pad)[:, None])
        probs_t = _exp2(logits_t - lse_log2[None, :])
        grad_v = _matmul_add(
            probs_t.to(grad_out.dtype), tl.trans(grad_out), grad_v)
        grad_probs_t = _matmul(v, grad_out)
        grad_logits_t = probs_t * (grad_probs_t - delta[None, :])
        grad_k = _matmul_add(grad_logits_t.to(q.dtype), tl.trans(q), grad_k)

    # A source's only slot is its own position unless it is mirrored: rows
    # (cols) 1 .. pad and size - 1 - pad .. size - 2, every pixel of a
    # small map. Slots outside the map are mirror images.
    if SMALL_MAP:
        single = slot_row < 0
    else:
        single = (
            slot_valid & ((key_y < 1) | (key_y > pad)) &
            ((key_y < height - 1 - pad) | (key_y > height - 2)) &
            ((key_x < 1) | (key_x > pad)) & ((key_x < width - 1 - pad) |
                                             (key_x > width - 2)))
    _store_channel_major(
        dk_ptr + _map_offset(batch_head, heads, stride_dkb, stride_dkh),
        grad_k * scale, stride_dkd, key_y * stride_dky + key_x * stride_dkx,
        single, HEAD_DIM, BLOCK_D)
    _store_channel_major(
        dv_ptr + _map_offset(batch_head, heads, stride_dvb, stride_dvh),
        grad_v, stride_dvd, key_y * stride_dvy + key_x * stride_dvx, single,
        HEAD_DIM, BLOCK_D)
    slots = padded_height * padded_width
    slot_offsets = slot_row * padded_width + slot_col
    mirrored = slot_valid & ~single
    slots_base = batch_head.to(tl.int64) * HEAD_DIM * slots
    _store_channel_major(dk_slots_ptr + slots_base, grad_k * scale, slots,
                         slot_offsets, mirrored, HEAD_DIM, BLOCK_D)
    _store_channel_major(dv_slots_ptr + slots_base, grad_v, slots,
                         slot_offsets, mirrored, HEAD_DIM, BLOCK_D)


@_jit
def _fold_mirror_images_kernel(
        slots_ptr, grad_ptr, pixels_ptr, row_images_ptr, col_images_ptr,
        stride_gb, stride_gh, stride_gd, stride_gy, stride_gx, heads, height,
        width, pixel_count, HEAD_DIM: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_PIXELS: tl.constexpr,
        ROW_IMAGES: tl.constexpr, COL_IMAGES: tl.constexpr):
    """One program per (map, BLOCK_PIXELS of the pixel_count mirrored
    pixels listed at pixels_ptr, as y * width + x): the gradient of each,
    the sum of the float32 slot gradients at its padded positions (rows
    row_images_ptr[y, :ROW_IMAGES] x cols col_images_ptr[x, :COL_IMAGES],
    -1 for none), in a fixed order."""
    pad = KERNEL_SIZE // 2
    padded_width = width + 2 * pad
    slots = (height + 2 * pad) * padded_width
    blocks = tl.cdiv(pixel_count, BLOCK_PIXELS)
    batch_head = tl.program_id(0) // blocks
    index = (tl.program_id(0) % blocks) * BLOCK_PIXELS + tl.arange(
        0, BLOCK_PIXELS)
    valid = index < pixel_count
    pixel = tl.load(pixels_ptr + index, mask=valid, other=0)
    y, x = pixel // width, pixel % width
    slots_ptr += batch_head.to(tl.int64) * HEAD_DIM * slots
    total = tl.zeros([BLOCK_D, BLOCK_PIXELS], tl.float32)
    for i in tl.static_range(ROW_IMAGES):
        row = tl.load(
            row_images_ptr + y * ROW_IMAGES + i, mask=valid, other=-1)
        for j in tl.static_range(COL_IMAGES):
            col = tl.load(
                col_images_ptr + x * COL_IMAGES + j, mask=valid, other=-1)
            total += _load_channel_major(slots_ptr, slots,
                                         row * padded_width + col,
                                         (row >= 0) & (col >= 0), HEAD_DIM,
                                         BLOCK_D)
    _store_channel_major(
        grad_ptr + _map_offset(batch_head, heads, stride_gb, stride_gh),
        tl.trans(total), stride_gd, y * stride_gy + x * stride_gx, valid,
        HEAD_DIM, BLOCK_D)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


class Tiling(NamedTuple):
    """Compile-time geometry of one kernel: a tile_h x tile_w tile (of
    queries, or of key slots) and its hot loop of loop_rows iterations over
    rows of chunk_w slots (or queries)."""
    tile_h: int
    tile_w: int
    loop_rows: int
    chunk_w: int

    def as_meta(self) -> dict:
        """Keyword constexpr arguments of the kernels."""
        return dict(
            TILE_H=self.tile_h,
            TILE_W=self.tile_w,
            LOOP_ROWS=self.loop_rows,
            CHUNK_W=self.chunk_w)


def _chunk(count: int) -> int:
    """Power of two >= count, at least 16 (the smallest tl.dot size)."""
    return max(16, triton.next_power_of_2(count))


def query_tiling(kernel_size: int, stride: int, head_dim: int,
                 dtype: torch.dtype) -> Tiling:
    """Forward and dQ: a tile of queries against one row of key slots per
    step, the row their windows cover (stride * (tile_w - 1) + kernel_size
    slots, 14 for 2 x 8 queries and 7 x 7 windows: a chunk of 16).

    A query computes loop_rows * chunk_w logits for its kernel_size ** 2.
    16 queries (2 x 8; 4 x 4 at stride 2, which spreads the windows)
    compute 128 for 49 at stride 1. Wide heads (64, 128 channels) take
    taller tiles, 4 or 8 rows (8 x 4 at stride 2): more logits wasted, but
    fewer reloads of the key slots, which then cost more than the logits.
    """
    wide = head_dim > 32
    if stride == 1:
        tile_h, tile_w = ((4 if head_dim <= 64 else 8) if wide else 2), 8
    else:
        tile_h, tile_w = (8 if wide else 4), 4
    return Tiling(tile_h, tile_w,
                  stride * (tile_h - 1) + kernel_size,
                  _chunk(stride * (tile_w - 1) + kernel_size))


def key_tiling(kernel_size: int, stride: int, head_dim: int,
               dtype: torch.dtype) -> Tiling:
    """dK/dV: a tile of key slots (2 x 8; 4 x 8 for wide heads) against one
    row of the queries whose windows cover them per step (at most
    (tile_w - 1 + 2 * pad) // stride + 1 queries)."""
    tile_h, tile_w = (4 if head_dim > 32 else 2), 8
    reach = 2 * (kernel_size // 2)
    return Tiling(tile_h, tile_w, (tile_h - 1 + reach) // stride + 1,
                  _chunk((tile_w - 1 + reach) // stride + 1))


def head_block(head_dim: int) -> int:
    """Channel block: next power of two >= max(head_dim, 16)."""
    return triton.next_power_of_2(max(head_dim, 16))


class LaunchPlan(NamedTuple):
    """How a kernel covers one input shape: its grid size and the
    iterations of its one runtime loop (the hot loop) per program."""
    programs: int
    loop_trips: int


class KernelSpec(NamedTuple):
    """A kernel, the tiling its launcher gives it and its other constexpr
    arguments (used to compile the kernels ahead of time), and whether its
    programs tile the output (queries) or the padded input (key slots)."""
    kernel: Callable
    tiling: Callable[[int, int, int, torch.dtype], Tiling]
    extra_meta: Dict[str, bool]
    tiles_queries: bool

    def launch_plan(self, shape: Tuple[int, int, int, int,
                                       int], kernel_size: int, stride: int,
                    dtype: torch.dtype) -> LaunchPlan:
        """Grid and hot-loop trips for (B, heads, D, H, W) inputs."""
        batch, heads, head_dim, height, width = shape
        tiling = self.tiling(kernel_size, stride, head_dim, dtype)
        return LaunchPlan(
            batch * heads * _tile_count(
                *self.grid_shape(height, width, kernel_size, stride), tiling),
            tiling.loop_rows)

    def grid_shape(self, height: int, width: int, kernel_size: int,
                   stride: int) -> Tuple[int, int]:
        """Rows and columns of what the programs tile."""
        if self.tiles_queries:
            return math.ceil(height / stride), math.ceil(width / stride)
        pad = kernel_size // 2
        return height + 2 * pad, width + 2 * pad


KERNELS = {
    'forward':
    KernelSpec(_forward_kernel, query_tiling, {}, True),
    'grad_query':
    KernelSpec(_grad_query_kernel, query_tiling, {'COMPUTE_GRAD_Q': True},
               True),
    'grad_key_value':
    KernelSpec(_grad_key_value_kernel, key_tiling, {}, False),
}

# (num_warps, num_stages) candidates of the autotuner (8 warps never: Triton
# 2.2 to 3.1 abort on some 8-warp kernels for Hopper).
TUNING_CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2))
# 'W,S' pins the kernels to the tuning config (W, S): no autotuning, e.g. for
# a test run that compiles every variant once instead of once per config.
TUNING_CONFIG_ENV = 'ACMIX_TUNING_CONFIG'


def tuning_configs(head_dim: int) -> Tuple[Tuple[int, int], ...]:
    """The TUNING_CONFIGS the autotuner tries for ``head_dim``: those whose
    registers hold the tiles without spilling (sm_90, 16-bit dtypes): 1 or
    2 warps up to 32 channels, 2 or 4 for 64, 4 for 128."""
    warps = (1, 2) if head_dim <= 32 else (2, 4) if head_dim <= 64 else (4, )
    return tuple(config for config in TUNING_CONFIGS if config[0] in warps)


def _autotuned(spec: KernelSpec, configs: Tuple[Tuple[int, int], ...]):
    """``spec.kernel`` autotuned over ``configs`` on GPUs, keyed only by
    (head dim, kernel size, stride, its extra constexprs) and the dtypes;
    the interpreter runs the kernel as is."""
    if interpreter_active():
        return spec.kernel
    candidates = [
        triton.Config({}, num_warps=warps, num_stages=stages)
        for warps, stages in configs
    ]
    key = ['HEAD_DIM', 'KERNEL_SIZE', 'STRIDE', *spec.extra_meta]
    return triton.autotune(candidates, key=key)(spec.kernel)


# Autotuned kernels by name and configs, made at their first launch: Triton
# 3.2 and 3.3 need a GPU driver to make an autotuner.
_AUTOTUNED: Dict[Tuple[str, tuple], Callable] = {}
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
        KernelError: the kernel failed to compile or launch; a CUDA
            out-of-memory error passes through unchanged.
    """
    config = config or pinned_tuning_config()
    try:
        with _device_guard(q):
            if config is None:
                configs = tuning_configs(meta['HEAD_DIM'])
                if (name, configs) not in _AUTOTUNED:
                    _AUTOTUNED[name,
                               configs] = _autotuned(KERNELS[name], configs)
                kernel = _AUTOTUNED[name, configs]
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
        raise _kernel_error(name, q, meta, _variant(q, meta), error) from error


def _kernel_error(name: str, q: Tensor, meta: dict, variant: tuple,
                  error: Exception) -> 'KernelError':
    """KernelError for kernel ``name`` launched on ``q``'s device with
    constexprs ``meta``."""
    device = torch.cuda.get_device_name(q.device) if q.is_cuda \
        else str(q.device)
    return KernelError(
        f'the fused {name} kernel failed to compile or launch on {device} '
        f'(Triton {triton.__version__}; {q.dtype}, head_dim '
        f'{meta["HEAD_DIM"]}, kernel_size {meta["KERNEL_SIZE"]}): '
        f'{type(error).__name__}: {error}', variant)


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


def _tile_count(rows: int, cols: int, tiling: Tiling) -> int:
    """Number of tiles covering a rows x cols grid."""
    return (triton.cdiv(rows, tiling.tile_h) *
            triton.cdiv(cols, tiling.tile_w))


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
    tiling = query_tiling(kernel_size, stride, head_dim, q.dtype)
    grid = (batch * heads * _tile_count(out_height, out_width, tiling), )
    _launch(
        'forward',
        q,
        grid,
        q,
        k,
        v,
        out,
        lse,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(out),
        heads,
        height,
        width,
        out_height,
        out_width,
        float(scale),
        config=config,
        **_shape_meta(q, kernel_size, stride),
        **tiling.as_meta())
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
    common = _shape_meta(q, kernel_size, stride)
    sizes = (heads, height, width, out_height, out_width, float(scale))
    delta = torch.empty_like(lse)
    tiling = query_tiling(kernel_size, stride, head_dim, q.dtype)
    grid = (maps * _tile_count(out_height, out_width, tiling), )
    # Without dQ the kernel only writes delta: any pointer stands in.
    dq_target = grad_q if need_grad_q else delta
    dq_strides = _strides(grad_q) if need_grad_q else (0, ) * 5
    _launch(
        'grad_query',
        q,
        grid,
        q,
        k,
        v,
        out,
        grad_out,
        lse,
        delta,
        dq_target,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(out),
        *_strides(grad_out),
        *dq_strides,
        *sizes,
        config=config,
        **common,
        **tiling.as_meta(),
        COMPUTE_GRAD_Q=need_grad_q)
    if need_grad_kv:
        tiling = key_tiling(kernel_size, stride, head_dim, q.dtype)
        pad = kernel_size // 2
        grid = (maps *
                _tile_count(height + 2 * pad, width + 2 * pad, tiling), )
        slots_k, slots_v = torch.empty(
            (2, maps, head_dim, height + 2 * pad, width + 2 * pad),
            dtype=torch.float32,
            device=q.device).unbind(0)
        _launch(
            'grad_key_value',
            q,
            grid,
            q,
            k,
            v,
            grad_out,
            lse,
            delta,
            grad_k,
            grad_v,
            slots_k,
            slots_v,
            *_strides(q),
            *_strides(k),
            *_strides(v),
            *_strides(grad_out),
            *_strides(grad_k),
            *_strides(grad_v),
            *sizes,
            config=config,
            **common,
            **tiling.as_meta())
        variant = _variant(q, common)
        _fold_mirror_images(slots_k, grad_k, kernel_size, variant)
        _fold_mirror_images(slots_v, grad_v, kernel_size, variant)
    return grad_q, grad_k, grad_v


# Launch geometry of the fold: pixels per program, warps.
_FOLD_BLOCK_PIXELS, _FOLD_WARPS = 32, 4


class _MirroredPixels(NamedTuple):
    """The mirrored pixels of a map (as y * W + x) and each row's and
    column's padded positions (-1 filled to the widest)."""
    pixels: Tensor
    row_images: Tensor
    col_images: Tensor


def _axis_images(size: int, pad: int) -> Tuple[list, list]:
    """Padded positions of each pixel of an axis (-1 filled to the widest),
    and whether each pixel has more than one (is mirrored)."""
    source_of = reflect_index(size, pad).tolist()
    images = [[
        position for position, source in enumerate(source_of)
        if source == pixel
    ] for pixel in range(size)]
    widest = max(len(positions) for positions in images)
    table = [
        positions + [-1] * (widest - len(positions)) for positions in images
    ]
    return table, [len(positions) > 1 for positions in images]


@functools.lru_cache(maxsize=64)
def _mirrored_pixels(height: int, width: int, pad: int,
                     device: torch.device) -> _MirroredPixels:
    """:class:`_MirroredPixels` of an H x W map padded by ``pad``."""
    rows, row_mirrored = _axis_images(height, pad)
    cols, col_mirrored = _axis_images(width, pad)
    pixels = [
        y * width + x for y in range(height) for x in range(width)
        if row_mirrored[y] or col_mirrored[x]
    ]
    return _MirroredPixels(
        *(torch.tensor(values, dtype=torch.int32, device=device)
          for values in (pixels, rows, cols)))


def _fold_mirror_images(slots: Tensor, grad: Tensor, kernel_size: int,
                        variant: tuple) -> None:
    """Write into ``grad`` (B, heads, D, H, W) the gradient of each mirrored
    pixel: the sum of the float32 gradients that the dK/dV kernel left in
    ``slots`` (B * heads, D, H + 2 pad, W + 2 pad) at its padded positions.
    The kernel wrote the other pixels' gradients into ``grad`` itself."""
    batch, heads, head_dim, height, width = grad.shape
    mirrored = _mirrored_pixels(height, width, kernel_size // 2, grad.device)
    count = mirrored.pixels.numel()
    if count == 0:
        return
    meta = dict(
        HEAD_DIM=head_dim,
        KERNEL_SIZE=kernel_size,
        BLOCK_D=head_block(head_dim),
        BLOCK_PIXELS=_FOLD_BLOCK_PIXELS,
        ROW_IMAGES=mirrored.row_images.shape[1],
        COL_IMAGES=mirrored.col_images.shape[1])
    grid = (batch * heads * triton.cdiv(count, _FOLD_BLOCK_PIXELS), )
    try:
        with _device_guard(grad):
            _fold_mirror_images_kernel[grid](
                slots,
                grad,
                *mirrored,
                *_strides(grad),
                heads,
                height,
                width,
                count,
                **meta,
                num_warps=_FOLD_WARPS,
                num_stages=1)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:
        raise _kernel_error('dK/dV fold', grad, meta, variant, error) \
            from error
