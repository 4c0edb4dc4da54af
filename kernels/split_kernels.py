"""Split-K decode attention over page-size-1 KV slot lists, GQA folded into the query tile.

Stage 1 (`partial_kernel`): one program per (segment, split) x kv head. A segment is
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

Stage 2 (`merge_kernel`): exact log-sum-exp merge of a row's columns (a row in no
group skips the P group columns). lse is kept in base 2 (scores scaled by
sm_scale * log2(e)). Launchers: decode_paged.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_BLOCK_M = 128  # members x padded heads folded into one query tile
LOG2E = 1.4426950408889634

# NOTE: two Triton 3.6 interpreter bugs shape the INTERPRET branches: it turns scalars
# into shape-(1,) arrays and int()s them for range(), which numpy >= 2.4 refuses (so the
# KV loop is a while loop there; compiled code keeps the for loop that the software
# pipeliner needs), and its tl.dot multiplies bf16 bit patterns as uint16 (so operands
# are upcast to float32 there, after the same bf16 rounding as on the GPU).


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c


@triton.jit
def _load_slots(idx_ptr, kv_lo, start, hi, BLOCK_N: tl.constexpr):
    n = start + tl.arange(0, BLOCK_N)
    return tl.load(idx_ptr + kv_lo + n, mask=n < hi, other=0)


@triton.jit
def _attend_tile(q, slot, start, hi, k_base, v_base, stride_kt, stride_vt, dims, qk_scale,
                 m_i, l_i, acc, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                 INTERPRET: tl.constexpr):
    # One online-softmax step over the slots [start, start + BLOCK_N) of a segment.
    n_ok = start + tl.arange(0, BLOCK_N) < hi
    slot = slot.to(tl.int64)
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
def partial_kernel(
    q_ptr, k_ptr, v_ptr, o_part_ptr, lse_part_ptr,
    grp_kv_indptr, grp_kv_indices, grp_row_indptr, grp_rows,
    row_kv_indptr, row_kv_indices,
    num_groups, grp_splits, row_splits, qk_scale,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_pb, stride_ph, stride_pc, stride_lb, stride_lh,
    GQA: tl.constexpr, HEADS_PAD: tl.constexpr, BLOCK_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    PREFETCH: tl.constexpr, INTERPRET: tl.constexpr,
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
    # NOTE: with PREFETCH the slot ids of tile i+1 are loaded while tile i is gathered
    # and computed, so each iteration waits on one dependent load (K/V), not two.
    if PREFETCH:
        slot = _load_slots(idx_ptr, kv_lo, lo, hi, BLOCK_N)
    if INTERPRET:
        start = lo
        while start < hi:
            if PREFETCH:
                nxt = _load_slots(idx_ptr, kv_lo, start + BLOCK_N, hi, BLOCK_N)
            else:
                slot = _load_slots(idx_ptr, kv_lo, start, hi, BLOCK_N)
            m_i, l_i, acc = _attend_tile(q, slot, start, hi, k_base, v_base, stride_kt, stride_vt,
                                         dims, qk_scale, m_i, l_i, acc, BLOCK_N, PRECISION, INTERPRET)
            if PREFETCH:
                slot = nxt
            start += BLOCK_N
    else:
        for start in range(lo, hi, BLOCK_N):
            if PREFETCH:
                nxt = _load_slots(idx_ptr, kv_lo, start + BLOCK_N, hi, BLOCK_N)
            else:
                slot = _load_slots(idx_ptr, kv_lo, start, hi, BLOCK_N)
            m_i, l_i, acc = _attend_tile(q, slot, start, hi, k_base, v_base, stride_kt, stride_vt,
                                         dims, qk_scale, m_i, l_i, acc, BLOCK_N, PRECISION, INTERPRET)
            if PREFETCH:
                slot = nxt

    # An empty split writes lse = -inf and o = 0, which the merge weighs as nothing.
    has = l_i > 0
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    p_off = rows * stride_pb + heads * stride_ph + col * stride_pc
    tl.store(o_part_ptr + p_off[:, None] + dims[None, :], o, mask=row_ok[:, None])
    tl.store(lse_part_ptr + rows * stride_lb + heads * stride_lh + col, lse, mask=row_ok)


@triton.jit(do_not_specialize=["grp_splits"])
def merge_kernel(
    o_part_ptr, lse_part_ptr, out_ptr, row_in_group, grp_splits, num_cols,
    stride_pb, stride_ph, stride_pc, stride_lb, stride_lh, stride_ob, stride_oh,
    HAS_GROUPS: tl.constexpr, COLS_PAD: tl.constexpr, COL_CHUNK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    # A row in no group has no prefix columns (no group program wrote them): skip them.
    col_lo = 0
    if HAS_GROUPS:
        col_lo = tl.where(tl.load(row_in_group + b) != 0, 0, grp_splits)
    lse_row = lse_part_ptr + b * stride_lb + h * stride_lh
    cols = tl.arange(0, COLS_PAD)
    lse = tl.load(lse_row + cols, mask=(cols >= col_lo) & (cols < num_cols), other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m > float("-inf"), m, 0.0)  # all empty: weights are 0, output 0
    denom = tl.sum(tl.where(lse > float("-inf"), tl.exp2(lse - m), 0.0), 0)
    dims = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for c0 in tl.static_range(0, COLS_PAD, COL_CHUNK):
        c = c0 + tl.arange(0, COL_CHUNK)
        lse_c = tl.load(lse_row + c, mask=(c >= col_lo) & (c < num_cols), other=float("-inf"))
        live = lse_c > float("-inf")
        wgt = tl.where(live, tl.exp2(lse_c - m), 0.0)  # [COL_CHUNK]
        o = tl.load(o_part_ptr + b * stride_pb + h * stride_ph + c[:, None] * stride_pc + dims[None, :],
                    mask=live[:, None], other=0.0)  # [COL_CHUNK, D]
        acc += tl.sum(o * wgt[:, None], 0)
    out = acc / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


# Whether TRITON_INTERPRET=1 was set when these kernels were decorated (read once, so a
# later change of the variable cannot mix interpreted and compiled launches).
INTERPRET = type(partial_kernel).__name__ == "InterpretedFunction"
