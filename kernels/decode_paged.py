"""Split-K decode attention over page-size-1 KV slot lists, GQA folded into the query tile.

Stage 1 (`_partial_kernel`): one program per (segment, split) x kv head. A segment is
a slot list plus the batch rows that attend to it; the program loads each K/V tile of
its split once and runs it against every query row of the segment, all folded into the
M dimension of one tl.dot:

    M = BLOCK_W members x HEADS_PAD query heads of this kv head
    m:   0 .. HEADS_PAD-1 | HEADS_PAD .. 2*HEADS_PAD-1 | ...
         member 0         | member 1                   | ...   (head = m % HEADS_PAD)

It writes a partial (o, lse) per row, head and column. Plain decode has one segment
per batch row (its whole slot list, columns [0, S)); shared-prefix decode
(shared_prefix.py) adds group segments whose members are sibling rows:

    columns of a row:  0 .. P-1             | P .. P+S-1
                       group prefix splits  | the row's own slots (suffix) splits

Stage 2 (`_merge_kernel`): exact log-sum-exp merge of a row's columns. lse is kept in
base 2 (scores scaled by sm_scale * log2(e)); only the merged output leaves this file.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .checks import check_index, check_out, check_positive, check_qkv
from .reference import decode_reference

MAX_SPLITS = 64  # per segment kind; a row has at most 2 * MAX_SPLITS columns
MAX_BLOCK_M = 128  # members x padded heads folded into one query tile
MIN_SPLIT_LEN = 512  # tokens: shorter splits cost more in partials than they gain
LOG2E = 1.4426950408889634

# NOTE: two Triton 3.6 interpreter bugs shape the INTERPRET branches: it turns scalars
# into shape-(1,) arrays and int()s them for range(), which numpy >= 2.4 refuses (so the
# KV loop is a while loop there; compiled code keeps the for loop that the software
# pipeliner needs), and its tl.dot multiplies bf16 bit patterns as uint16 (so operands
# are upcast to float32 there, after the same bf16 rounding as on the GPU).

__all__ = ["decode_paged", "decode_reference", "default_splits", "launch_attention"]


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c


@triton.jit
def _attend_tile(q, start, hi, kv_lo, idx_ptr, k_base, v_base, stride_kt, stride_vt, dims,
                 qk_scale, m_i, l_i, acc, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                 INTERPRET: tl.constexpr):
    # One online-softmax step over the slots [start, start + BLOCK_N) of a segment.
    n = start + tl.arange(0, BLOCK_N)
    n_ok = n < hi
    slot = tl.load(idx_ptr + kv_lo + n, mask=n_ok, other=0).to(tl.int64)
    # k, v: [BLOCK_N, D], one gathered row of D contiguous elements per slot
    k = tl.load(k_base + slot[:, None] * stride_kt + dims[None, :], mask=n_ok[:, None], other=0.0)
    v = tl.load(v_base + slot[:, None] * stride_vt + dims[None, :], mask=n_ok[:, None], other=0.0)
    s = _dot(q, tl.trans(k), PRECISION, INTERPRET) * qk_scale  # [BLOCK_M, BLOCK_N]
    s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: the tile holds >= 1 slot
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, INTERPRET)
    return m_new, l_i, acc


# NOTE: counts stay runtime ints (no specialization on value 1), so one compiled kernel
# serves every batch and both if-branches below see int32 scalars, never constexprs.
@triton.jit(do_not_specialize=["num_groups", "grp_splits", "row_splits"])
def _partial_kernel(
    q_ptr, k_ptr, v_ptr, o_part_ptr, lse_part_ptr,
    grp_kv_indptr, grp_kv_indices, grp_row_indptr, grp_rows,
    row_kv_indptr, row_kv_indices,
    num_groups, grp_splits, row_splits, qk_scale,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_pb, stride_ph, stride_pc, stride_lb, stride_lh,
    GQA: tl.constexpr, HEADS_PAD: tl.constexpr, BLOCK_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    mm = tl.arange(0, BLOCK_W * HEADS_PAD)
    w = mm // HEADS_PAD  # member index within the segment
    h = mm % HEADS_PAD  # query head within this kv head
    num_grp_progs = num_groups * grp_splits
    if pid < num_grp_progs:  # a group segment: shared slots, rows from the group CSR
        seg = pid // grp_splits
        split = pid % grp_splits
        num_splits = grp_splits
        col = split
        r_lo = tl.load(grp_row_indptr + seg)
        n_rows = tl.load(grp_row_indptr + seg + 1) - r_lo
        kv_lo = tl.load(grp_kv_indptr + seg)
        kv_hi = tl.where(n_rows > 0, tl.load(grp_kv_indptr + seg + 1), kv_lo)  # no rows: no reads
        idx_ptr = grp_kv_indices
        row_ok = (w < n_rows) & (h < GQA)
        rows = tl.load(grp_rows + r_lo + w, mask=row_ok, other=0)
    else:  # a row segment: the row's own slots, one member
        seg = (pid - num_grp_progs) // row_splits
        split = (pid - num_grp_progs) % row_splits
        num_splits = row_splits
        col = grp_splits + split
        kv_lo = tl.load(row_kv_indptr + seg)
        kv_hi = tl.load(row_kv_indptr + seg + 1)
        idx_ptr = row_kv_indices
        row_ok = (w < 1) & (h < GQA)
        rows = w * 0 + seg
    rows = rows.to(tl.int64)
    heads = kvh * GQA + h
    dims = tl.arange(0, HEAD_DIM)
    # q: [BLOCK_M, D]; padding rows are zeros and never stored
    q = tl.load(q_ptr + rows[:, None] * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)

    # Split boundaries in tokens, whole tiles per split except the last one.
    kv_len = kv_hi - kv_lo
    split_len = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, kv_len)
    m_i = tl.full([BLOCK_W * HEADS_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_W * HEADS_PAD], tl.float32)
    acc = tl.zeros([BLOCK_W * HEADS_PAD, HEAD_DIM], tl.float32)
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    if INTERPRET:
        start = lo
        while start < hi:
            m_i, l_i, acc = _attend_tile(q, start, hi, kv_lo, idx_ptr, k_base, v_base, stride_kt,
                                         stride_vt, dims, qk_scale, m_i, l_i, acc, BLOCK_N, PRECISION,
                                         INTERPRET)
            start += BLOCK_N
    else:
        for start in range(lo, hi, BLOCK_N):
            m_i, l_i, acc = _attend_tile(q, start, hi, kv_lo, idx_ptr, k_base, v_base, stride_kt,
                                         stride_vt, dims, qk_scale, m_i, l_i, acc, BLOCK_N, PRECISION,
                                         INTERPRET)

    # An empty split writes lse = -inf and o = 0, which the merge weighs as nothing.
    has = l_i > 0
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    p_off = rows * stride_pb + heads * stride_ph + col * stride_pc
    tl.store(o_part_ptr + p_off[:, None] + dims[None, :], o, mask=row_ok[:, None])
    tl.store(lse_part_ptr + rows * stride_lb + heads * stride_lh + col, lse, mask=row_ok)


@triton.jit
def _merge_kernel(
    o_part_ptr, lse_part_ptr, out_ptr, num_cols,
    stride_pb, stride_ph, stride_pc, stride_lb, stride_lh, stride_ob, stride_oh,
    COLS_PAD: tl.constexpr, COL_CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    lse_row = lse_part_ptr + b * stride_lb + h * stride_lh
    cols = tl.arange(0, COLS_PAD)
    lse = tl.load(lse_row + cols, mask=cols < num_cols, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m > float("-inf"), m, 0.0)  # all empty: weights are 0, output 0
    denom = tl.sum(tl.where(lse > float("-inf"), tl.exp2(lse - m), 0.0), 0)
    dims = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for c0 in tl.static_range(0, COLS_PAD, COL_CHUNK):
        c = c0 + tl.arange(0, COL_CHUNK)
        lse_c = tl.load(lse_row + c, mask=c < num_cols, other=float("-inf"))
        live = lse_c > float("-inf")
        wgt = tl.where(live, tl.exp2(lse_c - m), 0.0)  # [COL_CHUNK]
        o = tl.load(o_part_ptr + b * stride_pb + h * stride_ph + c[:, None] * stride_pc + dims[None, :],
                    mask=live[:, None], other=0.0)  # [COL_CHUNK, D]
        acc += tl.sum(o * wgt[:, None], 0)
    out = acc / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


# Whether TRITON_INTERPRET=1 was set when these kernels were decorated (read once, so a
# later change of the variable cannot mix interpreted and compiled launches).
INTERPRET = type(_partial_kernel).__name__ == "InterpretedFunction"


def launch_attention(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,  # [num_slots, Hkv, D]
    out: torch.Tensor,  # [B, Hq, D]
    row_kv_indptr: torch.Tensor,  # [B + 1] int32
    row_kv_indices: torch.Tensor,  # [nnz_rows] int32
    row_splits: int,
    sm_scale: float,
    groups: tuple[torch.Tensor, ...] | None = None,  # (kv_indptr, kv_indices, row_indptr, rows)
    grp_splits: int = 0,
    max_group_size: int = 1,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> torch.Tensor:
    """Both stages, no checks (the wrappers check). Allocates only shape-sized buffers."""
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    gqa = num_q_heads // num_kv_heads
    heads_pad = triton.next_power_of_2(gqa)
    block_w = max(triton.next_power_of_2(max_group_size), 16 // min(heads_pad, 16))
    if block_w * heads_pad > MAX_BLOCK_M:
        raise ValueError(
            f"{max_group_size} members x {gqa} q heads per kv head exceed one {MAX_BLOCK_M}-row"
            " query tile: split big groups (build_shared_prefix_meta(max_members=...))"
        )
    num_groups = 0 if groups is None else groups[0].numel() - 1
    grp_kv_indptr, grp_kv_indices, grp_row_indptr, grp_rows = groups or (row_kv_indptr,) * 4
    num_cols = grp_splits + row_splits
    # o_part: [B, Hq, cols, D] fp32, lse_part: [B, Hq, cols] fp32 (base-2 lse)
    o_part = torch.empty(batch, num_q_heads, num_cols, head_dim, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(batch, num_q_heads, num_cols, dtype=torch.float32, device=q.device)
    block_n = block_n or (64 if head_dim <= 128 else 32)
    grid = (num_groups * grp_splits + batch * row_splits, num_kv_heads)
    _partial_kernel[grid](
        q, k_cache, v_cache, o_part, lse_part,
        grp_kv_indptr, grp_kv_indices, grp_row_indptr, grp_rows,
        row_kv_indptr, row_kv_indices,
        num_groups, grp_splits, row_splits, sm_scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1),
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0), lse_part.stride(1),
        GQA=gqa, HEADS_PAD=heads_pad, BLOCK_W=block_w, HEAD_DIM=head_dim, BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", INTERPRET=INTERPRET,
        num_warps=num_warps or (4 if block_w * heads_pad <= 64 else 8), num_stages=num_stages,
    )
    cols_pad = triton.next_power_of_2(num_cols)
    _merge_kernel[(batch, num_q_heads)](
        o_part, lse_part, out, num_cols,
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0), lse_part.stride(1),
        out.stride(0), out.stride(1),
        COLS_PAD=cols_pad, COL_CHUNK=min(cols_pad, 16), HEAD_DIM=head_dim, num_warps=4,
    )
    return out


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(
    num_segments: int,
    num_kv_heads: int,
    max_len: int | None,
    device: torch.device,
    programs_per_sm: int = 3,
) -> int:
    """Splits per segment: `programs_per_sm` programs per SM in all (one wave at the
    kernel's occupancy, so no program runs alone at the end), each split at least
    MIN_SPLIT_LEN tokens (partials cost 2 * rows / split_len of the KV bytes)."""
    want = math.ceil(programs_per_sm * _sm_count(device) / max(1, num_segments * num_kv_heads))
    if max_len is not None:
        want = min(want, math.ceil(max_len / MIN_SPLIT_LEN))
    return max(1, min(want, MAX_SPLITS))


def decode_paged(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,  # [num_slots, Hkv, D]
    kv_indptr: torch.Tensor,  # [B + 1] int32
    kv_indices: torch.Tensor,  # [nnz] int32 slot ids, any order
    sm_scale: float,
    *,
    num_kv_splits: int | None = None,
    max_kv_len: int | None = None,
    out: torch.Tensor | None = None,  # [B, Hq, D], q's dtype
    block_n: int | None = None,
) -> torch.Tensor:  # [B, Hq, D]
    """Decode attention of row b over slots kv_indices[kv_indptr[b]:kv_indptr[b+1]].

    Never syncs the host nor reads index values on it, so it can be captured in a CUDA
    graph: the split count comes from `num_kv_splits`, else from `max_kv_len` (a host
    int) and the SM count. A row with no slots gets zeros.
    """
    batch, _, num_kv_heads, _ = check_qkv(q, k_cache, v_cache, INTERPRET)
    check_index("kv_indptr", kv_indptr, q.device, batch + 1)
    check_index("kv_indices", kv_indices, q.device)
    if not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float, got {type(sm_scale).__name__}")
    if num_kv_splits is None:
        num_kv_splits = default_splits(batch, num_kv_heads, max_kv_len, q.device)
    check_positive("num_kv_splits", num_kv_splits, MAX_SPLITS)
    out = check_out(out, q)
    if batch == 0:
        return out
    return launch_attention(q, k_cache, v_cache, out, kv_indptr, kv_indices, num_kv_splits,
                            float(sm_scale), block_n=block_n)
