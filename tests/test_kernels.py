"""Decode attention kernels vs their float32 torch references.

On a machine without CUDA the kernels run under TRITON_INTERPRET=1 on CPU tensors (set
here, before triton is imported through npr_engine.kernels); with CUDA and without
TRITON_INTERPRET they run compiled on the GPU. Inputs are random (never zeros), outputs
are poisoned with NaN first and must come back fully written.
Tolerances are relative, ||out - ref|| / ||ref||: float32 1e-5 (ieee dots), bf16 and
fp16 2e-2 (operands and the softmax weights rounded to 8/11 mantissa bits).
"""

import os
import random

import pytest
import torch

# NOTE: the interpreter is chosen when the kernels are decorated (first import of
# npr_engine.kernels) and read again at each launch, so the variable is set for the import
# and, through `_interpreter_env`, while this module's tests run; it is restored outside
# so that other tests' subprocesses (SGLang servers) do not inherit it.
_saved_interpret = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

from npr_engine.kernels import (  # noqa: E402
    GraphPlan,  # noqa: F401  (for test_kernels_graph.py, which must import after this set-up)
    SharedPrefixMeta,
    build_shared_prefix_meta,
    decode_paged,
    decode_reference,
    join_slot_lists,
    shared_prefix_decode,
    shared_prefix_reference,
)
from npr_engine.kernels.decode_paged import INTERPRET  # noqa: E402


def _restore_interpret() -> None:
    if _saved_interpret is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _saved_interpret


_restore_interpret()
if INTERPRET != (DEVICE == "cpu"):
    raise RuntimeError(
        f"npr_engine.kernels was imported with TRITON_INTERPRET={'1' if INTERPRET else 'unset'}"
        f" but the tests run on {DEVICE}: set TRITON_INTERPRET before anything imports it"
    )


@pytest.fixture(autouse=True, scope="module")
def _interpreter_env():
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    _restore_interpret()

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
HEAD_DIM = 32
NUM_SLOTS = 2048


def make_cache(num_kv_heads: int, dtype: torch.dtype, gen: torch.Generator):
    """K/V caches that are strided views (every other kv head of a wider buffer)."""
    shape = (NUM_SLOTS, 2 * num_kv_heads, HEAD_DIM)
    k = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)[:, ::2]
    v = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)[:, ::2]
    return k, v  # [NUM_SLOTS, Hkv, D] each


def make_q(batch: int, num_q_heads: int, dtype: torch.dtype, gen: torch.Generator):
    """q as a view into a fused qkv-like buffer (row stride > Hq * D)."""
    buf = torch.randn(batch, num_q_heads + 4, HEAD_DIM, generator=gen)
    return buf.to(dtype).to(DEVICE)[:, :num_q_heads]  # [B, Hq, D]


def to_device(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    indptr = [0]
    for slots in lists:
        indptr.append(indptr[-1] + len(slots))
    flat = [s for slots in lists for s in slots]
    return (torch.tensor(indptr, dtype=torch.int32, device=DEVICE),
            torch.tensor(flat, dtype=torch.int32, device=DEVICE))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "output has NaN/inf: not every element was written"
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def poisoned(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, float("nan"))


def nested_join_rows(widths: list[int], prefix_lens: list[int], rng: random.Random):
    """Per-row slot lists shaped like SGLang's req_to_token rows after nested joins.

    Slots come off one shuffled free list in decode order, so siblings interleave:

        parent row: prompt | b1 b2 b1 b2 ... (joined branches, interleaved slot ids) | ...
        child i:    parent row (shared prefix)  | own suffix, interleaved with siblings
    """
    free = list(range(NUM_SLOTS))
    rng.shuffle(free)
    rows, groups = [], []
    for width, plen in zip(widths, prefix_lens, strict=True):
        prompt = [free.pop() for _ in range(plen // 2)]
        branches: list[list[int]] = [[], []]
        for t in range(plen - len(prompt)):  # an earlier fork of two, then joined
            branches[t % 2].append(free.pop())
        parent = prompt + branches[0] + branches[1]
        suffix_lens = [rng.randint(1, 40) for _ in range(width)]
        suffixes: list[list[int]] = [[] for _ in range(width)]
        for t in range(max(suffix_lens)):
            for i in range(width):
                if t < suffix_lens[i]:
                    suffixes[i].append(free.pop())
        groups.append((list(range(len(rows), len(rows) + width)), plen))
        rows += [parent + s for s in suffixes]
    return rows, groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gqa", [1, 4, 8])
def test_decode_paged_matches_reference(dtype: torch.dtype, gqa: int) -> None:
    gen, rng = torch.Generator().manual_seed(gqa), random.Random(gqa)
    num_kv_heads = 2
    k, v = make_cache(num_kv_heads, dtype, gen)
    lens = [1, 17, 64, 130, 0, 200]  # one tile, partial tiles, many tiles, an empty row
    free = rng.sample(range(NUM_SLOTS), sum(lens))
    lists = [free[sum(lens[:b]) : sum(lens[: b + 1])] for b in range(len(lens))]
    kv_indptr, kv_indices = to_device(lists)
    q = make_q(len(lens), gqa * num_kv_heads, dtype, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.3, torch.float32)
    for splits in (1, 3):
        out = decode_paged(q, k, v, kv_indptr, kv_indices, 0.3, num_kv_splits=splits,
                           block_n=16, out=poisoned(q))
        assert out.dtype == dtype
        assert rel_err(out, ref) < TOL[dtype], splits
    assert out[4].abs().sum() == 0  # no slots: zeros


def test_decode_paged_fp16_many_splits() -> None:
    gen = torch.Generator().manual_seed(7)
    k, v = make_cache(2, torch.float16, gen)
    kv_indptr, kv_indices = to_device([list(range(300, 400)), list(range(99, -1, -1))])
    q = make_q(2, 8, torch.float16, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.2, torch.float32)
    # 64 splits of 100 tokens: most splits are empty and must merge as nothing.
    out = decode_paged(q, k, v, kv_indptr, kv_indices, 0.2, num_kv_splits=64, out=poisoned(q))
    assert rel_err(out, ref) < TOL[torch.float16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gqa", [1, 4, 8])
def test_shared_prefix_ragged_nested(dtype: torch.dtype, gqa: int) -> None:
    gen, rng = torch.Generator().manual_seed(10 + gqa), random.Random(gqa)
    k, v = make_cache(2, dtype, gen)
    # Groups of 3, 1 and 5 rows with different prefix lengths, one ungrouped row after.
    rows, groups = nested_join_rows([3, 1, 5], [90, 33, 150], rng)
    rows.append(rng.sample(range(NUM_SLOTS), 25))
    kv_indptr, kv_indices = to_device(rows)
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, groups, num_prefix_splits=3)
    q = make_q(len(rows), 2 * gqa, dtype, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.25, torch.float32)
    assert rel_err(shared_prefix_reference(q, k, v, meta, 0.25, torch.float32), ref) < 1e-6
    out = shared_prefix_decode(q, k, v, meta, 0.25, block_n=16, out=poisoned(q))
    assert out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("width", range(1, 9))
def test_shared_prefix_widths(width: int) -> None:
    gen, rng = torch.Generator().manual_seed(width), random.Random(width)
    k, v = make_cache(2, torch.bfloat16, gen)
    rows, groups = nested_join_rows([width], [rng.randint(40, 160)], rng)
    kv_indptr, kv_indices = to_device(rows)
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, groups)
    q = make_q(width, 8, torch.bfloat16, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.2, torch.float32)
    out = shared_prefix_decode(q, k, v, meta, 0.2, block_n=32, out=poisoned(q))
    assert rel_err(out, ref) < TOL[torch.bfloat16]
    plain = decode_paged(q, k, v, kv_indptr, kv_indices, 0.2, block_n=32)
    assert rel_err(plain, ref) < TOL[torch.bfloat16]


def test_shared_prefix_wide_groups_split_and_edge_rows() -> None:
    """16 members x 8 heads fill a 128-row tile; 12 members cut by max_members=5; a row
    whose whole KV is the prefix (empty suffix); a group with an empty prefix."""
    gen, rng = torch.Generator().manual_seed(3), random.Random(3)
    k, v = make_cache(1, torch.float32, gen)
    rows, groups = nested_join_rows([16, 12, 2], [20, 45, 0], rng)
    rows.append(rows[0][:20])  # shares group 0's prefix and has nothing of its own
    groups[0] = (groups[0][0] + [len(rows) - 1], 20)
    kv_indptr, kv_indices = to_device(rows)
    q = make_q(len(rows), 8, torch.float32, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.2, torch.float32)
    wide = [(groups[0][0][:16], 20)] + [([r], 20) for r in groups[0][0][16:]] + groups[1:]
    for grouping, cap in ((wide, 16), (groups, 5)):
        meta = build_shared_prefix_meta(kv_indptr, kv_indices, grouping, max_members=cap,
                                        num_prefix_splits=2, num_suffix_splits=2)
        assert meta.max_group_size == min(cap, 16)
        out = shared_prefix_decode(q, k, v, meta, 0.2, block_n=16, out=poisoned(q))
        assert rel_err(out, ref) < TOL[torch.float32]


def test_meta_layout_and_padding_group() -> None:
    """Exact metadata for a small case; a padding group without rows is harmless."""
    kv_indptr, kv_indices = to_device([[5, 9, 2, 7], [5, 9, 3], [8]])
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, [([1, 0], 2)])
    assert meta.prefix_indptr.tolist() == [0, 2]
    assert meta.prefix_indices.tolist() == [5, 9]
    assert meta.group_indptr.tolist() == [0, 2]
    assert meta.group_rows.tolist() == [1, 0]
    assert meta.row_in_group.tolist() == [1, 1, 0]  # row 2 is in no group: no prefix columns
    assert meta.suffix_indptr.tolist() == [0, 2, 3, 4]
    assert meta.suffix_indices.tolist() == [2, 7, 3, 8]
    i32 = {"dtype": torch.int32, "device": DEVICE}
    padded = SharedPrefixMeta(  # a second group with a prefix but no rows
        prefix_indptr=torch.tensor([0, 2, 4], **i32),
        prefix_indices=torch.tensor([5, 9, 1, 2], **i32),
        group_indptr=torch.tensor([0, 2, 2], **i32), group_rows=meta.group_rows,
        row_in_group=meta.row_in_group, suffix_indptr=meta.suffix_indptr,
        suffix_indices=meta.suffix_indices, max_group_size=2)
    gen = torch.Generator().manual_seed(5)
    k, v = make_cache(2, torch.float32, gen)
    q = make_q(3, 4, torch.float32, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.5, torch.float32)
    out = shared_prefix_decode(q, k, v, padded, 0.5, out=poisoned(q))
    assert rel_err(out, ref) < TOL[torch.float32]


def test_groups_of_one_take_the_per_sequence_path() -> None:
    """W = 1 blocks and cut-off single members share nothing: no group programs at all,
    and the result is decode_paged's, bit for bit (same kernel, same splits)."""
    gen, rng = torch.Generator().manual_seed(4), random.Random(4)
    k, v = make_cache(2, torch.bfloat16, gen)
    rows, groups = nested_join_rows([1, 1], [70, 30], rng)
    kv_indptr, kv_indices = to_device(rows)
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, groups)
    assert meta.num_groups == 0 and meta.row_in_group.tolist() == [0, 0]
    assert torch.equal(meta.suffix_indices, kv_indices)
    q = make_q(2, 8, torch.bfloat16, gen)
    shared = shared_prefix_decode(q, k, v, meta, 0.2, out=poisoned(q))
    plain = decode_paged(q, k, v, kv_indptr, kv_indices, 0.2, max_kv_len=meta.max_suffix_len)
    assert torch.equal(shared, plain)
    cut = build_shared_prefix_meta(*to_device([[1, 2, 3]] * 17), [(range(17), 2)], check=False)
    assert cut.group_indptr.tolist() == [0, 9, 17]  # 9 + 8, not 16 + a lone row


def test_prefetch_and_tile_knobs() -> None:
    """Every tile knob the benchmark sweeps computes the same function."""
    gen, rng = torch.Generator().manual_seed(6), random.Random(6)
    k, v = make_cache(2, torch.bfloat16, gen)
    rows, groups = nested_join_rows([3], [100], rng)
    rows.append(rng.sample(range(NUM_SLOTS), 50))
    kv_indptr, kv_indices = to_device(rows)
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, groups)
    q = make_q(len(rows), 8, torch.bfloat16, gen)
    ref = decode_reference(q, k, v, kv_indptr, kv_indices, 0.2, torch.float32)
    for knobs in ({"prefetch": True, "block_n": 16}, {"block_n": 32, "programs_per_sm": 1}):
        out = shared_prefix_decode(q, k, v, meta, 0.2, out=poisoned(q), **knobs)
        assert rel_err(out, ref) < TOL[torch.bfloat16], knobs
        out = decode_paged(q, k, v, kv_indptr, kv_indices, 0.2, out=poisoned(q), **knobs)
        assert rel_err(out, ref) < TOL[torch.bfloat16], knobs


def test_wrapper_validation() -> None:
    gen = torch.Generator().manual_seed(1)
    k, v = make_cache(2, torch.float32, gen)
    q = make_q(2, 8, torch.float32, gen)
    kv_indptr, kv_indices = to_device([[1, 2, 3], [4, 5]])
    bad = [
        (TypeError, {"kv_indices": kv_indices.long()}),
        (TypeError, {"k_cache": k.to(torch.bfloat16)}),
        (TypeError, {"q": q.to(torch.int32)}),
        (ValueError, {"q": q[:, :, 0]}),
        (ValueError, {"q": make_q(2, 5, torch.float32, gen)}),  # 5 q heads, 2 kv heads
        (ValueError, {"kv_indptr": kv_indptr[:2]}),
        (ValueError, {"num_kv_splits": 0}),
        (ValueError, {"num_kv_splits": 65}),
        (ValueError, {"out": torch.empty(2, 8, 16, device=DEVICE)}),
        (ValueError, {"q": q[..., :24], "k_cache": k[..., :24], "v_cache": v[..., :24]}),
        (ValueError, {"v_cache": v[:100]}),
        (ValueError, {"q": q.transpose(1, 2).contiguous().transpose(1, 2)}),
    ]
    args = {"q": q, "k_cache": k, "v_cache": v, "kv_indptr": kv_indptr,
            "kv_indices": kv_indices, "sm_scale": 0.1}
    for error, change in bad:
        with pytest.raises(error):
            decode_paged(**{**args, **change})


def test_shared_prefix_validation() -> None:
    kv_indptr, kv_indices = to_device([[1, 2, 3], [1, 2, 4], [1, 5]])
    with pytest.raises(ValueError, match="two groups"):
        build_shared_prefix_meta(kv_indptr, kv_indices, [([0, 1], 2), ([1, 2], 1)])
    with pytest.raises(ValueError, match="does not share"):
        build_shared_prefix_meta(kv_indptr, kv_indices, [([0, 2], 2)])
    with pytest.raises(ValueError, match="exceeds"):
        build_shared_prefix_meta(kv_indptr, kv_indices, [([0, 2], 3)])
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, [([0, 1, 2], 1)])
    gen = torch.Generator().manual_seed(2)
    k, v = make_cache(1, torch.float32, gen)
    with pytest.raises(ValueError, match="rows"):
        shared_prefix_decode(make_q(2, 4, torch.float32, gen), k, v, meta, 0.1)
    with pytest.raises(TypeError):
        shared_prefix_decode(make_q(3, 4, torch.float32, gen), k, v, "meta", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query tile"):  # 16 members x 16 heads > 128 rows
        wide_indptr, wide_indices = to_device([[1]] * 16)
        wide = build_shared_prefix_meta(wide_indptr, wide_indices, [(range(16), 1)])
        shared_prefix_decode(make_q(16, 16, torch.float32, gen), k, v, wide, 0.1)
    with pytest.raises(TypeError):
        SharedPrefixMeta(kv_indptr.long(), kv_indices, kv_indptr, kv_indices, kv_indices,
                         kv_indptr, kv_indices, max_group_size=1)
    with pytest.raises(ValueError, match="row_in_group"):
        join_slot_lists(meta.prefix_indptr, meta.prefix_indices, meta.group_indptr,
                        meta.group_rows[:2], meta.row_in_group, meta.suffix_indptr,
                        meta.suffix_indices)


def test_repeat_runs_identical() -> None:
    """The same inputs give bit-identical outputs (no cross-program races)."""
    gen, rng = torch.Generator().manual_seed(9), random.Random(9)
    k, v = make_cache(2, torch.bfloat16, gen)
    rows, groups = nested_join_rows([4, 2], [120, 60], rng)
    kv_indptr, kv_indices = to_device(rows)
    meta = build_shared_prefix_meta(kv_indptr, kv_indices, groups, num_prefix_splits=4)
    q = make_q(len(rows), 8, torch.bfloat16, gen)
    first = shared_prefix_decode(q, k, v, meta, 0.2, block_n=16)
    assert torch.equal(first, shared_prefix_decode(q, k, v, meta, 0.2, block_n=16))
