"""Launchers of the split-K decode kernels (split_kernels.py) and the per-sequence
wrapper `decode_paged`.

`launch_attention` runs both stages for any mix of group segments (shared prefixes,
shared_prefix.py) and row segments (each row's own slots); the wrappers check their
arguments and choose the launch configuration (tuning.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .checks import check_index, check_out, check_positive, check_qkv
from .split_kernels import INTERPRET, LOG2E, MAX_BLOCK_M, merge_kernel, partial_kernel
from .tuning import MAX_SPLITS, TileConfig, per_seq_splits, tile_config, wave_slots

__all__ = ["INTERPRET", "GroupArgs", "decode_paged", "launch_attention", "query_tile"]


class GroupArgs(NamedTuple):
    """Group segments of one launch (device int32 tensors)."""

    kv_indptr: torch.Tensor  # [G + 1] into kv_indices
    kv_indices: torch.Tensor  # [nnz] each group's shared prefix slots
    row_indptr: torch.Tensor  # [G + 1] into rows
    rows: torch.Tensor  # [members] batch rows of each group
    row_in_group: torch.Tensor  # [B] 1 where the row is a member of some group, else 0


def query_tile(num_q_heads: int, num_kv_heads: int, max_group_size: int) -> tuple[int, int]:
    """(BLOCK_W members, HEADS_PAD heads): the query tile is BLOCK_W x HEADS_PAD rows,
    at least 16 (the smallest tl.dot M) and at most MAX_BLOCK_M."""
    heads_pad = triton.next_power_of_2(num_q_heads // num_kv_heads)
    block_w = max(triton.next_power_of_2(max_group_size), 16 // min(heads_pad, 16))
    if block_w * heads_pad > MAX_BLOCK_M:
        raise ValueError(
            f"{max_group_size} members x {num_q_heads // num_kv_heads} q heads per kv head exceed"
            f" one {MAX_BLOCK_M}-row query tile: split big groups"
            " (build_shared_prefix_meta(max_members=...))"
        )
    return block_w, heads_pad


def launch_attention(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,  # [num_slots, Hkv, D]
    out: torch.Tensor,  # [B, Hq, D]
    row_kv_indptr: torch.Tensor,  # [B + 1] int32
    row_kv_indices: torch.Tensor,  # [nnz_rows] int32
    row_splits: int,
    sm_scale: float,
    cfg: TileConfig,
    groups: GroupArgs | None = None,
    grp_splits: int = 0,
    max_group_size: int = 1,
) -> torch.Tensor:
    """Both stages, no checks (the wrappers check). Allocates only shape-sized buffers."""
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    block_w, heads_pad = query_tile(num_q_heads, num_kv_heads, max_group_size)
    num_groups = 0 if groups is None else groups.kv_indptr.numel() - 1
    if groups is None:
        groups, grp_splits = GroupArgs(*(row_kv_indptr,) * 5), 0  # placeholders, never read
    num_cols = grp_splits + row_splits
    # o_part: [B, Hq, cols, D] fp32, lse_part: [B, Hq, cols] fp32 (base-2 lse)
    o_part = torch.empty(batch, num_q_heads, num_cols, head_dim, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(batch, num_q_heads, num_cols, dtype=torch.float32, device=q.device)
    grid = (num_groups * grp_splits + batch * row_splits, num_kv_heads)
    partial_kernel[grid](
        q, k_cache, v_cache, o_part, lse_part,
        groups.kv_indptr, groups.kv_indices, groups.row_indptr, groups.rows,
        row_kv_indptr, row_kv_indices,
        num_groups, grp_splits, row_splits, sm_scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1),
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0), lse_part.stride(1),
        GQA=num_q_heads // num_kv_heads, HEADS_PAD=heads_pad, BLOCK_W=block_w, HEAD_DIM=head_dim,
        BLOCK_N=cfg.block_n, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        PREFETCH=cfg.prefetch, INTERPRET=INTERPRET,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    cols_pad = triton.next_power_of_2(num_cols)
    merge_kernel[(batch, num_q_heads)](
        o_part, lse_part, out, groups.row_in_group, grp_splits, num_cols,
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0), lse_part.stride(1),
        out.stride(0), out.stride(1),
        HAS_GROUPS=num_groups > 0, COLS_PAD=cols_pad, COL_CHUNK=min(cols_pad, 16),
        HEAD_DIM=head_dim, num_warps=4,
    )
    return out


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
    **knobs: int | bool | None,  # TileConfig overrides: block_n, num_warps, num_stages, ...
) -> torch.Tensor:  # [B, Hq, D]
    """Decode attention of row b over slots kv_indices[kv_indptr[b]:kv_indptr[b+1]].

    Never syncs the host nor reads index values on it, so it can be captured in a CUDA
    graph: the split count comes from `num_kv_splits`, else from `max_kv_len` (a host
    int) and the SM count. A row with no slots gets zeros.
    """
    batch, num_q_heads, num_kv_heads, head_dim = check_qkv(q, k_cache, v_cache, INTERPRET)
    check_index("kv_indptr", kv_indptr, q.device, batch + 1)
    check_index("kv_indices", kv_indices, q.device)
    if not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float, got {type(sm_scale).__name__}")
    block_w, heads_pad = query_tile(num_q_heads, num_kv_heads, 1)
    cfg = tile_config(block_w * heads_pad, head_dim, **knobs)
    if num_kv_splits is None:
        slots = wave_slots(num_kv_heads, cfg, q.device)
        num_kv_splits = per_seq_splits(batch, max_kv_len, slots, cfg.block_n)
    check_positive("num_kv_splits", num_kv_splits, MAX_SPLITS)
    out = check_out(out, q)
    if batch == 0:
        return out
    return launch_attention(q, k_cache, v_cache, out, kv_indptr, kv_indices, num_kv_splits,
                            float(sm_scale), cfg)
