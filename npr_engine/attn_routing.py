"""Which decode rows read a shared prefix together, and which kernel a batch goes to.

Pure bookkeeping (plain Python on host ints; torch only to build the kernel metadata),
so the rules are tested on CPU with exact groups. The `npr_triton` attention backend
(patches/attention_backend.py) calls `plan_decode` once per eager decode step.

Sibling branches of one block alias the parent's first L slots in their req_to_token
rows (zero-copy fork), so a group is (member rows, L):

    row of branch i:  parent slots 0 .. L-1 (shared)  | branch i's own slots
    after a nested join the shared part itself is   prompt | b1 | b2 | ... (any slot ids)

Rows that are not branches, and blocks with one live branch, are singletons: they take
the per-sequence path, which the shared-prefix kernel must never be slower than.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from npr_engine.kernels import SharedPrefixMeta

Group = tuple[list[int], int]  # (batch rows in row order, shared prefix length L)


class Route(Enum):
    PER_SEQ = "per_seq"  # no row shares a prefix with another: plain paged decode
    SHARED = "shared"  # >= 1 sibling group of two or more rows: shared-prefix decode


@dataclass(frozen=True)
class RowSiblings:
    """One decode row's sibling info: `key` names its block (None: not a branch)."""

    key: Hashable | None
    prefix_len: int = 0


def rows_from_reqs(reqs: Sequence[object]) -> list[RowSiblings]:
    """Sibling info of SGLang requests in batch order (`req.npr` set by the scheduler)."""
    rows = []
    for req in reqs:
        seq = getattr(req, "__dict__", {}).get("npr")
        block = getattr(seq, "block", None)
        if block is None:
            rows.append(RowSiblings(None))
        else:
            # NOTE: id(block): siblings share the Block object; it lives while they run.
            rows.append(RowSiblings(id(block), int(block.prefix_len)))
    return rows


def sibling_groups(rows: Sequence[RowSiblings], row_lens: Sequence[int]) -> list[Group]:
    """Groups of >= 2 rows with the same key, in order of their first row.

    L is the smallest prefix_len among the members, capped by the shortest member row
    (a branch always holds its prefix, so the cap only guards inconsistent input).
    """
    if len(rows) != len(row_lens):
        raise ValueError(f"{len(rows)} rows of sibling info for {len(row_lens)} kv rows")
    members: dict[Hashable, list[int]] = {}
    for b, row in enumerate(rows):
        if row.key is not None:
            members.setdefault(row.key, []).append(b)
    groups = []
    for key_rows in members.values():
        if len(key_rows) < 2:
            continue
        length = min(min(rows[b].prefix_len for b in key_rows), min(row_lens[b] for b in key_rows))
        if length > 0:
            groups.append((key_rows, length))
    return groups


def route(groups: Sequence[Group]) -> Route:
    return Route.SHARED if any(len(rows) >= 2 for rows, _ in groups) else Route.PER_SEQ


def shared_prefix_len(slot_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of slot lists (verifies a group on host)."""
    if not slot_lists:
        return 0
    n = min(len(s) for s in slot_lists)
    first = slot_lists[0]
    for i in range(n):
        if any(s[i] != first[i] for s in slot_lists[1:]):
            return i
    return n


def check_groups(groups: Sequence[Group], slot_lists: Sequence[Sequence[int]]) -> None:
    """Raises ValueError unless every group's members share their first L slots."""
    for rows, length in groups:
        have = shared_prefix_len([slot_lists[b] for b in rows])
        if have < length:
            raise ValueError(f"rows {rows} share {have} slots, not the {length} claimed")


def plan_decode(
    kv_indptr: Sequence[int],  # [B + 1] host ints
    kv_indices: torch.Tensor,  # [nnz] int32 slot ids of every row, concatenated
    rows: Sequence[RowSiblings],
    *,
    check: bool = False,
) -> SharedPrefixMeta | None:
    """Shared-prefix metadata for a decode batch, or None for the per-sequence route.

    `check` compares the members' prefix slots (a device-to-host copy: tests only).
    """
    row_lens = [kv_indptr[b + 1] - kv_indptr[b] for b in range(len(kv_indptr) - 1)]
    groups = sibling_groups(rows, row_lens)
    if route(groups) is Route.PER_SEQ:
        return None
    from npr_engine.kernels import build_shared_prefix_meta

    return build_shared_prefix_meta(kv_indptr, kv_indices, groups, check=check)


class GraphRouting:
    """Sibling routing for CUDA-graph decode steps (the `npr_triton` backend).

    A graph replays the launches it captured, so the shared-prefix plan lives in fixed
    buffers (kernels/graph_plan.py): one GraphPlan per captured batch size, all of them
    sharing the largest one's index buffers (graphs replay one at a time). At capture a
    plan is filled with no group (the recorded launch is the shared-prefix one, its grid
    fixed by the plan); before each replay with that step's sibling groups. A step with
    no group of two or more reads every row whole as its suffix: the per-sequence result
    from the same launch.
    """

    def __init__(self, max_batch: int, capacity: int, device, splits) -> None:
        self.max_batch, self.capacity, self.device = max_batch, capacity, device
        self.splits = splits  # batch size -> (prefix splits, suffix splits), fixed per graph
        self._plans: dict[int, object] = {}
        self._storage = None

    def plan(self, batch: int):
        plan = self._plans.get(batch)
        if plan is None:
            from npr_engine.kernels import GraphPlan

            if batch > self.max_batch:
                raise ValueError(f"batch {batch} is over the largest captured batch {self.max_batch}")
            if self._storage is None:
                self._storage = GraphPlan(self.max_batch, self.capacity, self.device,
                                          num_prefix_splits=1, num_suffix_splits=1)
            prefix, suffix = self.splits(batch)
            plan = self._plans[batch] = GraphPlan(batch, self.capacity, self.device, num_prefix_splits=prefix,
                                                  num_suffix_splits=suffix, share=self._storage)
        return plan

    def fill(self, batch: int, kv_lens: Sequence[int], kv_indices: torch.Tensor,
             rows: Sequence[RowSiblings] | None) -> tuple[SharedPrefixMeta, bool]:
        """The plan of a (padded) graph batch: its meta, and whether a group was routed.
        `rows`: sibling info of the real rows (None at capture); padding rows have none."""
        import torch

        plan = self.plan(batch)
        lens = [int(n) for n in kv_lens[:batch]]
        indptr = [0]
        for n in lens:
            indptr.append(indptr[-1] + n)
        slots = kv_indices[: indptr[-1]].to(torch.int32)
        padded = [*(rows or ()), *[RowSiblings(None)] * (batch - len(rows or ()))][:batch]
        groups = sibling_groups(padded, lens)
        if groups and plan.fill(indptr, slots, groups):
            return plan.meta, True
        if not plan.fill(indptr, slots, []):
            raise ValueError(f"{indptr[-1]} KV slots are over the graph plan's capacity {self.capacity}")
        return plan.meta, False
