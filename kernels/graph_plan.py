"""Shared-prefix decode inside CUDA graphs: the plan lives in fixed device buffers.

A captured graph replays the kernels it recorded with the tensors (addresses) and host
ints (grid, constexprs) of its capture. So for each captured batch size B the plan is
kept in buffers allocated once, at capacity, and before each replay the step's own
plan is copied into them (`fill`); nothing the kernels read changes address or shape:

  groups                  G = B // 2 slots (a group has two rows or more); slots a
                          step does not use are empty (their indptr entries repeat)
  prefix / suffix indices `capacity` slot ids each (at least every row's KV of the
                          batch: SGLang's kv_indices buffer size for the graph)
  split counts, max group size   fixed here, so the grid is G*P + B*S programs

With no sibling group in a step, every group slot is empty and each row reads its
whole KV as its suffix: the same kernels, the per-sequence result. A step whose plan
does not fit (more slot ids than `capacity`) is refused: `fill` returns False and the
caller runs that step outside the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .checks import check_positive
from .shared_prefix import SharedPrefixMeta, build_shared_prefix_meta
from .tuning import MAX_SPLITS

__all__ = ["GraphPlan"]


class GraphPlan:
    def __init__(self, batch_size: int, capacity: int, device: torch.device | str, *,
                 num_prefix_splits: int, num_suffix_splits: int, max_group_size: int = 16,
                 share: GraphPlan | None = None) -> None:
        """`share`: a plan of a batch size >= this one whose big index buffers this one
        reuses (graphs replay one at a time, each filled just before it runs)."""
        check_positive("batch_size", batch_size)
        check_positive("capacity", capacity)
        check_positive("num_prefix_splits", num_prefix_splits, MAX_SPLITS)
        check_positive("num_suffix_splits", num_suffix_splits, MAX_SPLITS)
        check_positive("max_group_size", max_group_size)
        self.batch_size, self.capacity = batch_size, capacity
        self.max_groups = batch_size // 2

        def zeros(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.int32, device=device)

        groups = self.max_groups
        if share is not None:
            if share.batch_size < batch_size or share.capacity < capacity:
                raise ValueError("a shared plan must be at least as large")
            big = (share.meta.prefix_indices[:capacity], share.meta.suffix_indices[:capacity],
                   share.meta.group_rows[:max(batch_size, 1)])
        else:
            big = (zeros(capacity), zeros(capacity), zeros(max(batch_size, 1)))
        self.meta = SharedPrefixMeta(
            prefix_indptr=zeros(groups + 1), prefix_indices=big[0],
            group_indptr=zeros(groups + 1), group_rows=big[2],
            row_in_group=zeros(batch_size), suffix_indptr=zeros(batch_size + 1),
            suffix_indices=big[1], max_group_size=min(max_group_size, max(batch_size, 1)),
            num_prefix_splits=num_prefix_splits, num_suffix_splits=num_suffix_splits,
        )

    def fill(
        self,
        kv_indptr: torch.Tensor | Sequence[int],  # [B + 1], read on the host
        kv_indices: torch.Tensor,  # [nnz] int32 slot ids of every row
        groups: Sequence[tuple[Sequence[int], int]],  # (member rows, shared prefix length)
    ) -> bool:
        """Copy this step's plan into the buffers; False if it does not fit them."""
        plan = build_shared_prefix_meta(kv_indptr, kv_indices, groups, max_members=self.meta.max_group_size,
                                        check=False)
        if plan.batch_size != self.batch_size:
            raise ValueError(f"the plan has {plan.batch_size} rows, the graph {self.batch_size}")
        used = plan.num_groups
        n_prefix, n_suffix = plan.prefix_indices.numel(), plan.suffix_indices.numel()
        if used > self.max_groups or max(n_prefix, n_suffix) > self.capacity:
            return False
        m = self.meta
        m.prefix_indptr[: used + 1].copy_(plan.prefix_indptr)
        m.prefix_indptr[used + 1:].fill_(n_prefix)  # empty group slots
        m.group_indptr[: used + 1].copy_(plan.group_indptr)
        m.group_indptr[used + 1:].fill_(plan.group_rows.numel())
        m.prefix_indices[:n_prefix].copy_(plan.prefix_indices)
        m.group_rows[: plan.group_rows.numel()].copy_(plan.group_rows)
        m.row_in_group.copy_(plan.row_in_group)
        m.suffix_indptr.copy_(plan.suffix_indptr)
        m.suffix_indices[:n_suffix].copy_(plan.suffix_indices)
        return True

    def buffers(self) -> dict[str, int]:
        """Each buffer's address (a replay needs them unchanged)."""
        names = ("prefix_indptr", "prefix_indices", "group_indptr", "group_rows", "row_in_group",
                 "suffix_indptr", "suffix_indices")
        return {name: getattr(self.meta, name).data_ptr() for name in names}
