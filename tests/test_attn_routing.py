"""Routing of decode rows to the shared-prefix kernel (npr_engine.attn_routing), on CPU.

Slot lists are shaped like SGLang's req_to_token rows under fork/join: branches alias
the parent's slots, joins concatenate branch slots, and slot ids come off a free list
in decode order, so siblings' own slots interleave.
"""

from types import SimpleNamespace

import pytest
import torch
from npr_engine.kernels import decode_reference, shared_prefix_reference

from npr_engine.attn_routing import (
    Route,
    RowSiblings,
    check_groups,
    plan_decode,
    route,
    rows_from_reqs,
    shared_prefix_len,
    sibling_groups,
)


def flat(lists: list[list[int]]) -> tuple[list[int], torch.Tensor]:
    indptr = [0]
    for slots in lists:
        indptr.append(indptr[-1] + len(slots))
    return indptr, torch.tensor([s for slots in lists for s in slots], dtype=torch.int32)


def branch(block: object) -> SimpleNamespace:
    return SimpleNamespace(npr=SimpleNamespace(block=block))


def nested_batch() -> tuple[list[list[int]], list[RowSiblings]]:
    """A depth-2 unit plus two plain requests, as one decode batch:

        prompt 0..5 | outer fork (L=6): branch 1 writes 10 12 14, branch 2 writes 11 13 15
        branch 1 forks again (L=9): 1a writes 20 22, 1b writes 21 23 (interleaved ids)
        rows: [plain] [branch 2] [1a] [plain] [1b]  (branch 1 is parked, not in the batch)
    """
    prompt = [0, 1, 2, 3, 4, 5]
    b1, b2 = [10, 12, 14], [11, 13, 15]
    rows = [[40, 41, 42], prompt + b2, prompt + b1 + [20, 22], [50], prompt + b1 + [21, 23]]
    outer, inner = object(), object()
    info = [RowSiblings(None), RowSiblings(id(outer), 6), RowSiblings(id(inner), 9),
            RowSiblings(None), RowSiblings(id(inner), 9)]
    return rows, info


def test_groups_exact_and_singletons_dropped() -> None:
    rows, info = nested_batch()
    lens = [len(r) for r in rows]
    # The outer block has one live branch in the batch: a singleton, not a group.
    assert sibling_groups(info, lens) == [([2, 4], 9)]
    assert route(sibling_groups(info, lens)) is Route.SHARED
    check_groups([([2, 4], 9)], rows)
    with pytest.raises(ValueError, match="share 9 slots"):
        check_groups([([2, 4], 10)], rows)


def test_group_order_and_prefix_caps() -> None:
    info = [RowSiblings("a", 4), RowSiblings("b", 3), RowSiblings("a", 4), RowSiblings("b", 3),
            RowSiblings("c", 2), RowSiblings("b", 3), RowSiblings("d", 0), RowSiblings("d", 0)]
    lens = [9, 5, 8, 3, 7, 6, 2, 2]
    # Groups by first row; "c" has one row; "d" shares nothing (L = 0); a row shorter
    # than the claimed prefix caps it (inconsistent input never reads past a row).
    assert sibling_groups(info, lens) == [([0, 2], 4), ([1, 3, 5], 3)]
    lens[3] = 2
    assert sibling_groups(info, lens)[1] == ([1, 3, 5], 2)
    with pytest.raises(ValueError, match="rows of sibling info"):
        sibling_groups(info, lens[:-1])


def test_no_groups_route_per_seq() -> None:
    rows = [[1, 2, 3], [1, 2, 4]]  # a radix-shared prompt, but not siblings
    indptr, indices = flat(rows)
    assert plan_decode(indptr, indices, [RowSiblings(None)] * 2) is None
    one = object()  # a W = 1 block: its only branch is a singleton
    assert plan_decode(indptr, indices, [RowSiblings(id(one), 2), RowSiblings(None)]) is None
    assert route([]) is Route.PER_SEQ


def test_plan_decode_meta_exact() -> None:
    rows, info = nested_batch()
    indptr, indices = flat(rows)
    meta = plan_decode(indptr, indices, info, check=True)
    assert meta is not None
    assert meta.prefix_indptr.tolist() == [0, 9]
    assert meta.prefix_indices.tolist() == [0, 1, 2, 3, 4, 5, 10, 12, 14]
    assert meta.group_indptr.tolist() == [0, 2]
    assert meta.group_rows.tolist() == [2, 4]
    assert meta.row_in_group.tolist() == [0, 0, 1, 0, 1]
    assert meta.suffix_indptr.tolist() == [0, 3, 12, 14, 15, 17]
    assert meta.suffix_indices.tolist() == [40, 41, 42, 0, 1, 2, 3, 4, 5, 11, 13, 15,
                                            20, 22, 50, 21, 23]
    assert (meta.max_group_size, meta.max_prefix_len, meta.max_suffix_len) == (2, 9, 9)


def test_plan_matches_per_row_attention() -> None:
    """The planned layout attends to exactly each row's own slot list (float32 refs)."""
    rows, info = nested_batch()
    indptr, indices = flat(rows)
    meta = plan_decode(indptr, indices, info)
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(64, 2, 16, generator=gen) for _ in range(2))
    q = torch.randn(len(rows), 8, 16, generator=gen)
    want = decode_reference(q, k, v, torch.tensor(indptr, dtype=torch.int32), indices, 0.25)
    assert torch.allclose(shared_prefix_reference(q, k, v, meta, 0.25), want, atol=1e-6)


def test_rows_from_reqs() -> None:
    block = SimpleNamespace(prefix_len=7)
    reqs = [SimpleNamespace(), SimpleNamespace(npr=SimpleNamespace(block=None)),
            branch(block), branch(block), branch(SimpleNamespace(prefix_len=3))]
    rows = rows_from_reqs(reqs)
    assert [r.key for r in rows[:2]] == [None, None]
    assert rows[2] == rows[3] == RowSiblings(id(block), 7)
    assert rows[4].key != rows[2].key and rows[4].prefix_len == 3


def test_shared_prefix_len() -> None:
    assert shared_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert shared_prefix_len([[5]]) == 1
    assert shared_prefix_len([]) == 0


def test_backend_hook_module_registers_on_cpu() -> None:
    """The hook module imports on CPU, registers `npr_triton`, and tags decode batches."""
    pytest.importorskip("sglang")
    from npr_engine.patches import attention_backend as mod
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    from npr_engine.hooks import resolve

    assert mod.BACKEND_NAME in ATTENTION_BACKEND_CHOICES
    assert ATTENTION_BACKENDS[mod.BACKEND_NAME] is mod.create_backend
    mod.register_backend()  # idempotent
    assert ATTENTION_BACKEND_CHOICES.count(mod.BACKEND_NAME) == 1
    for hook in mod.HOOKS:
        resolve(hook.target)
    assert issubclass(mod.backend_class(), TritonAttnBackend)

    def batch(decode: bool) -> SimpleNamespace:
        mode = SimpleNamespace(is_decode=lambda: decode)
        return SimpleNamespace(forward_mode=mode)

    block = SimpleNamespace(prefix_len=4)
    reqs = SimpleNamespace(reqs=[SimpleNamespace(), branch(block), branch(block)])
    tagged = mod.tag_sibling_rows(batch(True), None, reqs)
    assert [r.key for r in tagged.npr_rows] == [None, id(block), id(block)]
    assert mod.tag_sibling_rows(batch(False), None, reqs).npr_rows is None
    plain = SimpleNamespace(reqs=[SimpleNamespace()])
    assert mod.tag_sibling_rows(batch(True), None, plain).npr_rows is None
    # A process that built no npr_triton backend (any other backend) skips the work.
    mod.backend_class.cache_clear()
    assert mod.tag_sibling_rows(batch(True), None, reqs).npr_rows is None
    assert issubclass(mod.backend_class(), TritonAttnBackend)
    # EagerRunner.load_batch returns a copy with declared fields only: the tag follows it.
    loaded = mod.carry_sibling_rows(SimpleNamespace(), None, tagged)
    assert loaded.npr_rows is tagged.npr_rows
    # So does the view a CUDA-graph replay prepares its metadata from (keyword call).
    view = mod.carry_rows_into_replay(SimpleNamespace(), forward_batch=tagged, bs=4, raw_bs=3)
    assert view.npr_rows is tagged.npr_rows


def test_graph_splits_take_the_device_as_sglang_keeps_it() -> None:
    """SGLang's attention backends keep `device` as a string ("cuda"): the per-graph split
    counts, computed at capture from it, must take one (the first H200 run with CUDA
    graphs died at capture on `'str' object has no attribute 'type'`)."""
    pytest.importorskip("sglang")
    from npr_engine.patches import attention_backend as mod

    cls = mod.backend_class()
    backend = object.__new__(cls)  # only what _npr_graph_splits reads
    backend.num_head, backend.num_kv_head, backend.v_head_dim, backend.device = 32, 8, 128, "cpu"
    for bs in (1, 8, 80):
        prefix, suffix = backend._npr_graph_splits(bs)
        assert prefix >= 1 and suffix >= 1
