"""Shared-prefix decode attention: sibling branches read their common prefix KV once.

Some rows of a batch of B are members of G sibling groups. A member attends to its
group's prefix slots, then its own suffix slots (a nested join makes both lists
non-contiguous, which is fine); a row in no group has only its own slots:

    member b's KV:  prefix of group(b) (shared by all members) | suffix of b (its own)
    columns:        0 .. P-1  (one per prefix split)           | P .. P+S-1
    other row's KV: its whole slot list as suffix: columns P .. P+S-1 only

With no group of two or more rows (W = 1, or no branches) the wrapper runs the
per-sequence path itself, so shared-prefix decode is never the slower choice.

One launch of decode_paged's `_partial_kernel` runs G*P group programs (each loads a
prefix K/V tile once for all W members x Hq/Hkv heads, folded into the tl.dot M
dimension) and B*S row programs (the suffixes) side by side, so the short suffix work
fills the SMs the long prefix work leaves idle; `_merge_kernel` then merges the P+S
partial (o, lse) of each row exactly. The kernels live in decode_paged.py; this file
holds the metadata, its builder, the wrapper and the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checks import check_index, check_out, check_positive, check_qkv
from .decode_paged import INTERPRET, GroupArgs, decode_paged, launch_attention, query_tile
from .reference import decode_reference, join_slot_lists
from .tuning import MAX_SPLITS, shared_splits, tile_config, wave_slots

__all__ = [
    "SharedPrefixMeta",
    "build_shared_prefix_meta",
    "shared_prefix_decode",
    "shared_prefix_reference",
]


@dataclass
class SharedPrefixMeta:
    """Device index tensors (all int32, 1-D, on one device) plus host ints for the grid.

    A batch row is in at most one group (`row_in_group` says which rows are); rows in
    no group read only their suffix, which is then their whole slot list. A group may
    be empty (no rows), e.g. as CUDA-graph padding. Split counts of None are chosen by
    the wrapper from the host lengths.
    """

    prefix_indptr: torch.Tensor  # [G + 1] into prefix_indices
    prefix_indices: torch.Tensor  # [nnz_prefix] slot ids of each group's shared prefix
    group_indptr: torch.Tensor  # [G + 1] into group_rows
    group_rows: torch.Tensor  # [members] batch rows of each group, a row at most once
    row_in_group: torch.Tensor  # [B] 1 for rows in group_rows, else 0
    suffix_indptr: torch.Tensor  # [B + 1] into suffix_indices
    suffix_indices: torch.Tensor  # [nnz_suffix] each row's own slots
    max_group_size: int  # >= members of any group; sizes the query tile
    max_prefix_len: int | None = None  # host hints for the split counts
    max_suffix_len: int | None = None
    num_prefix_splits: int | None = None
    num_suffix_splits: int | None = None

    def __post_init__(self) -> None:
        device = self.prefix_indptr.device
        num_groups = self.prefix_indptr.numel() - 1
        check_index("prefix_indptr", self.prefix_indptr, device)
        check_index("prefix_indices", self.prefix_indices, device)
        check_index("group_indptr", self.group_indptr, device, num_groups + 1)
        check_index("suffix_indptr", self.suffix_indptr, device)
        check_index("group_rows", self.group_rows, device)
        check_index("row_in_group", self.row_in_group, device, self.suffix_indptr.numel() - 1)
        check_index("suffix_indices", self.suffix_indices, device)
        check_positive("max_group_size", self.max_group_size)
        for name in ("num_prefix_splits", "num_suffix_splits"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), MAX_SPLITS)

    @property
    def num_groups(self) -> int:
        return self.prefix_indptr.numel() - 1

    @property
    def batch_size(self) -> int:
        return self.suffix_indptr.numel() - 1


def _chunks(rows: list[int], cap: int) -> list[list[int]]:
    """Rows cut into the fewest near-equal chunks of at most `cap` (17 by 16: 9 + 8)."""
    count = -(-len(rows) // cap)
    size, extra = divmod(len(rows), count)
    bounds = [0]
    for i in range(count):
        bounds.append(bounds[-1] + size + (i < extra))
    return [rows[bounds[i] : bounds[i + 1]] for i in range(count)]


def _check_group(kv_indices: torch.Tensor, bounds: list[int], rows: list[int], length: int) -> None:
    first = kv_indices[bounds[rows[0]] : bounds[rows[0]] + length]
    for r in rows[1:]:
        if not torch.equal(kv_indices[bounds[r] : bounds[r] + length], first):
            raise ValueError(f"row {r} does not share the first {length} slots of row {rows[0]}")


def build_shared_prefix_meta(
    kv_indptr: torch.Tensor | Sequence[int],  # [B + 1], read on the host
    kv_indices: torch.Tensor,  # [nnz] int32 slot ids (any device: the result's device)
    groups: Sequence[tuple[Sequence[int], int]],  # (member rows, shared prefix length)
    *,
    max_members: int = 16,
    check: bool = True,
    num_prefix_splits: int | None = None,
    num_suffix_splits: int | None = None,
) -> SharedPrefixMeta:
    """Shared-prefix layout from per-row slot lists (as SGLang's req_to_token rows give).

    Group (rows, L): the first L slots of every member row are the same slots. Groups
    over `max_members` rows are cut into near-equal groups over the same prefix; a
    group of one (or L = 0) shares nothing, so its row joins the rows in no group.
    `check` compares the members' prefix slots (a host sync: leave it on except in hot
    paths that guarantee it).
    """
    bounds = kv_indptr.tolist() if isinstance(kv_indptr, torch.Tensor) else list(kv_indptr)
    batch = len(bounds) - 1
    lengths = [bounds[b + 1] - bounds[b] for b in range(batch)]
    prefix_len = [0] * batch
    seen = [False] * batch
    prefixes: list[tuple[int, int]] = []  # (start in kv_indices, length) per group
    members: list[list[int]] = []
    for rows, length in groups:
        rows = [int(r) for r in rows]
        if not rows:
            raise ValueError("a group needs at least one row")
        for r in rows:
            if not 0 <= r < batch or seen[r]:
                raise ValueError(f"row {r} is out of range or in two groups")
            if not 0 <= length <= lengths[r]:
                raise ValueError(f"prefix length {length} exceeds row {r}'s {lengths[r]} slots")
            seen[r] = True
        if check:
            _check_group(kv_indices, bounds, rows, length)
        for chunk in _chunks(rows, max_members):
            if len(chunk) > 1 and length > 0:
                prefixes.append((bounds[chunk[0]], length))
                members.append(chunk)
                for r in chunk:
                    prefix_len[r] = length

    def indptr(sizes: list[int]) -> torch.Tensor:
        return torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0).to(torch.int32).to(device)

    def int32(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32).to(device)

    device = kv_indices.device
    suffix_sizes = [lengths[r] - prefix_len[r] for r in range(batch)]
    empty = kv_indices[:0]
    return SharedPrefixMeta(
        prefix_indptr=indptr([n for _, n in prefixes]),
        prefix_indices=torch.cat([kv_indices[s : s + n] for s, n in prefixes] + [empty]),
        group_indptr=indptr([len(m) for m in members]),
        group_rows=int32([r for m in members for r in m]),
        row_in_group=int32([int(n > 0) for n in prefix_len]),
        suffix_indptr=indptr(suffix_sizes),
        suffix_indices=torch.cat([kv_indices[bounds[r] + prefix_len[r] : bounds[r + 1]]
                                  for r in range(batch)] + [empty]),
        max_group_size=max([len(m) for m in members], default=1),
        max_prefix_len=max([n for _, n in prefixes], default=0),
        max_suffix_len=max(suffix_sizes, default=0),
        num_prefix_splits=num_prefix_splits,
        num_suffix_splits=num_suffix_splits,
    )


def shared_prefix_decode(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,  # [num_slots, Hkv, D]
    meta: SharedPrefixMeta,
    sm_scale: float,
    *,
    out: torch.Tensor | None = None,  # [B, Hq, D], q's dtype
    **knobs: int | bool | None,  # TileConfig overrides: block_n, num_warps, num_stages, ...
) -> torch.Tensor:  # [B, Hq, D]
    """Decode attention of each row over its group's prefix (if any) and its own suffix.

    Reads only tensor metadata and meta's host ints, so it can be captured in a CUDA
    graph (keep meta's tensors at fixed addresses and its host ints fixed).
    """
    if not isinstance(meta, SharedPrefixMeta):
        raise TypeError(f"meta must be a SharedPrefixMeta, got {type(meta).__name__}")
    batch, num_q_heads, num_kv_heads, head_dim = check_qkv(q, k_cache, v_cache, INTERPRET)
    if meta.batch_size != batch:
        raise ValueError(f"meta describes {meta.batch_size} rows, q has {batch}")
    if meta.prefix_indptr.device != q.device:
        raise ValueError(f"meta is on {meta.prefix_indptr.device}, q is on {q.device}")
    if not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float, got {type(sm_scale).__name__}")
    if meta.num_groups == 0:  # nothing shared: exactly the per-sequence path
        return decode_paged(q, k_cache, v_cache, meta.suffix_indptr, meta.suffix_indices, sm_scale,
                            num_kv_splits=meta.num_suffix_splits, max_kv_len=meta.max_suffix_len,
                            out=out, **knobs)
    out = check_out(out, q)
    if batch == 0:
        return out
    block_w, heads_pad = query_tile(num_q_heads, num_kv_heads, meta.max_group_size)
    cfg = tile_config(block_w * heads_pad, head_dim, **knobs)
    prefix_splits, suffix_splits = shared_splits(
        meta.num_groups, meta.max_prefix_len or 1, batch, meta.max_suffix_len or 1,
        wave_slots(num_kv_heads, cfg, q.device), cfg.block_n)
    groups = GroupArgs(meta.prefix_indptr, meta.prefix_indices, meta.group_indptr,
                       meta.group_rows, meta.row_in_group)
    return launch_attention(
        q, k_cache, v_cache, out, meta.suffix_indptr, meta.suffix_indices,
        meta.num_suffix_splits or suffix_splits, float(sm_scale), cfg, groups=groups,
        grp_splits=meta.num_prefix_splits or prefix_splits, max_group_size=meta.max_group_size,
    )


def shared_prefix_reference(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_slots, Hkv, D]
    v_cache: torch.Tensor,  # [num_slots, Hkv, D]
    meta: SharedPrefixMeta,
    sm_scale: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # [B, Hq, D]
    """Float32 reference: joins each row's prefix and suffix lists, then plain decode."""
    kv_indptr, kv_indices = join_slot_lists(
        meta.prefix_indptr, meta.prefix_indices, meta.group_indptr, meta.group_rows,
        meta.row_in_group, meta.suffix_indptr, meta.suffix_indices)
    return decode_reference(q, k_cache, v_cache, kv_indptr, kv_indices, sm_scale, out_dtype)
