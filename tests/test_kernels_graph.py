"""The shared-prefix plan inside CUDA graphs (kernels/graph_plan.py, attn_routing.GraphRouting):
fixed buffers, a fixed grid, refilled before each replay. Under the Triton interpreter on
CPU, with test_kernels.py's helpers (which set it up)."""

from __future__ import annotations

import random

import pytest
import torch

from tests.test_kernels import (
    DEVICE,
    TOL,
    GraphPlan,
    _interpreter_env,  # noqa: F401  (its autouse fixture: TRITON_INTERPRET while these run)
    decode_reference,
    make_cache,
    make_q,
    nested_join_rows,
    poisoned,
    rel_err,
    shared_prefix_decode,
    to_device,
)

# -- the plan inside CUDA graphs: fixed buffers, fixed grid ---------------------------------


def _graph_batches(rng: random.Random) -> list[tuple[list[list[int]], list]]:
    """Batches of 8 rows, as one captured batch size sees them step after step."""
    batches = []
    for widths in ([3, 5], [2, 2, 2, 2], [8], [1] * 8, [2, 1, 1, 4]):
        rows, groups = nested_join_rows(widths, [rng.randint(20, 120) for _ in widths], rng)
        batches.append((rows, [g for g in groups if len(g[0]) >= 2]))
    return batches


def test_graph_plan_replays_any_grouping_in_the_same_buffers() -> None:
    """One GraphPlan (captured batch size 8) filled step after step with different
    sibling groupings, none at all included: every step's output equals the reference,
    while no buffer moves and no host int the grid depends on changes."""
    gen, rng = torch.Generator().manual_seed(21), random.Random(21)
    k, v = make_cache(2, torch.float32, gen)
    plan = GraphPlan(8, 4096, DEVICE, num_prefix_splits=2, num_suffix_splits=2, max_group_size=8)
    addresses = plan.buffers()
    fixed = (plan.meta.num_groups, plan.meta.batch_size, plan.meta.max_group_size,
             plan.meta.num_prefix_splits, plan.meta.num_suffix_splits)
    assert fixed == (4, 8, 8, 2, 2)
    q = make_q(8, 8, torch.float32, gen)
    for rows, groups in _graph_batches(rng):
        kv_indptr, kv_indices = to_device(rows)
        assert plan.fill(kv_indptr, kv_indices, groups)
        assert plan.buffers() == addresses
        assert (plan.meta.num_groups, plan.meta.batch_size, plan.meta.max_group_size,
                plan.meta.num_prefix_splits, plan.meta.num_suffix_splits) == fixed
        used = sum(1 for g in groups if len(g[0]) >= 2)
        assert plan.meta.group_indptr.diff().gt(0).sum().item() == used  # the rest are empty slots
        ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.25, torch.float32)
        out = shared_prefix_decode(q, k, v, plan.meta, 0.25, block_n=16, out=poisoned(q))
        assert rel_err(out, ref) < TOL[torch.float32], groups


def test_graph_plan_refuses_what_does_not_fit() -> None:
    rng = random.Random(4)
    rows, groups = nested_join_rows([4, 4], [60, 60], rng)
    kv_indptr, kv_indices = to_device(rows)
    small = GraphPlan(8, 100, DEVICE, num_prefix_splits=1, num_suffix_splits=1)
    before = small.meta.suffix_indices.clone()
    assert not small.fill(kv_indptr, kv_indices, groups)  # more slot ids than its capacity
    assert torch.equal(small.meta.suffix_indices, before)  # refused before any copy
    with pytest.raises(ValueError, match="rows"):
        GraphPlan(4, 4096, DEVICE, num_prefix_splits=1, num_suffix_splits=1).fill(kv_indptr, kv_indices, groups)


def test_graph_routing_under_a_simulated_capture_and_padded_replays() -> None:
    """The npr_triton backend's CUDA-graph life, simulated: each batch size is captured
    with no sibling info (dummy rows), then replayed with real batches padded to it
    (padding rows read one dummy slot, as SGLang pads), sibling rows routed to the
    shared-prefix launch; two batch sizes share buffers and replay interleaved. Every
    replay equals the reference, and nothing the captured launch reads moves."""
    from npr_engine.attn_routing import GraphRouting, RowSiblings

    gen, rng = torch.Generator().manual_seed(8), random.Random(8)
    k, v = make_cache(2, torch.float32, gen)
    routing = GraphRouting(8, 4096, DEVICE, lambda bs: (2, 1 + bs // 8))
    buf = torch.zeros(4096, dtype=torch.int64, device=DEVICE)  # like the backend's graph kv_indices
    captured = {}
    for bs in (4, 8):
        meta, routed = routing.fill(bs, [1] * bs, buf, None)
        assert not routed
        captured[bs] = (routing.plan(bs).buffers(), meta.num_groups, meta.num_prefix_splits, meta.num_suffix_splits)
    assert captured[8][0]["suffix_indices"] == captured[4][0]["suffix_indices"]  # shared storage
    for bs, widths in ((8, [3, 4]), (4, [2, 1]), (8, [1, 1, 1]), (4, [4]), (8, [2, 2, 2, 2])):
        rows, groups = nested_join_rows(widths, [rng.randint(20, 90) for _ in widths], rng)
        info = [RowSiblings(None)] * len(rows)
        for key, (members, plen) in enumerate(groups):
            for r in members:
                info[r] = RowSiblings(key if len(members) > 1 else None, plen)
        padded = rows + [[0]] * (bs - len(rows))
        flat = [s for r in padded for s in r]
        buf[: len(flat)] = torch.tensor(flat, dtype=torch.int64)
        meta, routed = routing.fill(bs, [len(r) for r in padded], buf, info)
        assert routed == any(len(m) > 1 for m, _ in groups)
        plan = routing.plan(bs)
        assert (plan.buffers(), meta.num_groups, meta.num_prefix_splits, meta.num_suffix_splits) == captured[bs]
        q = make_q(bs, 4, torch.float32, gen)
        kv_indptr, kv_indices = to_device(padded)
        ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.3, torch.float32)
        out = shared_prefix_decode(q, k, v, meta, 0.3, block_n=16, out=poisoned(q))
        assert rel_err(out, ref) < TOL[torch.float32], (bs, widths)
