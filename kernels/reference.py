"""Plain torch references for the decode attention kernels (tests and the CPU path).

Both references gather each sequence's slots and compute softmax attention in float32,
one sequence at a time: slow, obvious, and independent of the kernels' split/merge.
"""

from __future__ import annotations

import torch


def decode_reference(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,  # [num_slots, Hkv, D]
    kv_indptr: torch.Tensor,  # [B + 1] int
    kv_indices: torch.Tensor,  # [nnz] int, slot ids
    sm_scale: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # [B, Hq, D]
    """Decode attention of row b over slots kv_indices[kv_indptr[b]:kv_indptr[b+1]].

    A row with no slots gets zeros. Returns `out_dtype` (default: q's dtype).
    """
    batch, num_q_heads, head_dim = q.shape
    group = num_q_heads // k_cache.shape[1]
    out = torch.zeros(batch, num_q_heads, head_dim, dtype=torch.float32, device=q.device)
    bounds = kv_indptr.tolist()
    for b in range(batch):
        slots = kv_indices[bounds[b] : bounds[b + 1]].long()
        if slots.numel() == 0:
            continue
        # k, v: [n, Hq, D] (each kv head repeated for its Hq / Hkv query heads)
        k = k_cache[slots].float().repeat_interleave(group, dim=1)
        v = v_cache[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].float(), k) * sm_scale  # [Hq, n]
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v)
    return out.to(out_dtype or q.dtype)


def join_slot_lists(
    prefix_indptr: torch.Tensor,  # [G + 1]
    prefix_indices: torch.Tensor,  # [nnz_prefix]
    group_indptr: torch.Tensor,  # [G + 1]
    group_rows: torch.Tensor,  # [members]
    row_in_group: torch.Tensor,  # [B]
    suffix_indptr: torch.Tensor,  # [B + 1]
    suffix_indices: torch.Tensor,  # [nnz_suffix]
) -> tuple[torch.Tensor, torch.Tensor]:  # kv_indptr [B + 1], kv_indices [nnz]
    """Per-row slot lists (group prefix if any, then the row's own suffix) of a
    shared-prefix layout; raises ValueError unless the rows in groups are exactly the
    rows `row_in_group` marks, each in one group."""
    batch = suffix_indptr.numel() - 1
    p_ptr, g_ptr = prefix_indptr.tolist(), group_indptr.tolist()
    s_ptr, rows, marked = suffix_indptr.tolist(), group_rows.tolist(), row_in_group.tolist()
    group_of_row = [-1] * batch
    for g in range(len(g_ptr) - 1):
        for r in rows[g_ptr[g] : g_ptr[g + 1]]:
            if not 0 <= r < batch or group_of_row[r] != -1:
                raise ValueError(f"group_rows: row {r} out of range or in two groups")
            group_of_row[r] = g
    for b in range(batch):
        if bool(marked[b]) != (group_of_row[b] != -1):
            raise ValueError(f"row_in_group[{b}] = {marked[b]} but the row is"
                             f" {'in no group' if group_of_row[b] == -1 else 'in a group'}")
    lists, lengths = [], []
    for b, g in enumerate(group_of_row):
        prefix = prefix_indices[p_ptr[g] : p_ptr[g + 1]] if g >= 0 else prefix_indices[:0]
        lists += [prefix, suffix_indices[s_ptr[b] : s_ptr[b + 1]]]
        lengths.append(prefix.numel() + s_ptr[b + 1] - s_ptr[b])
    kv_indptr = torch.zeros(batch + 1, dtype=torch.int32)
    kv_indptr[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    kv_indices = torch.cat(lists).to(torch.int32) if lists else prefix_indices[:0]
    return kv_indptr.to(suffix_indptr.device), kv_indices
