"""Hook: `sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new` (AFTER),
SGLang 0.5.23.

Positions are tied to the row: `seq_len - 1` in a decode step, `prefix_len + i` in an
extend. After a join the row holds prefix + every branch, but under the `shared`
policy the continuation's position is the fork position plus the longest branch:
subtract each request's offset here. A branch's first tokens (the parent's tokens it
computes itself: the fork token, a schema's fork separator) keep the parent's offset;
its header and everything after use its own (paths restart at pos(fork point) + 1).
A staged join (npr_engine/sched/staged.py) sets them for each tail it recomputes.
`seq_lens` stays the true KV length (attention reads every slot). The decode CUDA graph
copies `forward_batch.positions`, so the offset survives graphs.

MIXED batches (`--enable-mixed-chunk`) are extends whose decode rows are one-token
extends (prefix = seq_len - 1), so the extend rule covers them. `SHIFTED` counts the
shifted rows per forward mode (internal state `npr_positions_shifted`).
"""

from __future__ import annotations

from collections import Counter

import torch
from sglang.srt.model_executor.forward_batch_info import ForwardMode

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for_any
from npr_engine.sched.state import seq_of

SHIFTED: Counter[str] = Counter()


def shift_positions(forward_batch, cls, batch, *args, **kwargs):
    mode = forward_batch.forward_mode
    if not (mode.is_decode() or mode in (ForwardMode.EXTEND, ForwardMode.MIXED)):
        return forward_batch
    rows = None
    if mode.is_decode():
        # While the controller's partition describes this batch (npr_engine/sched/calm.py),
        # its rows' shifts are the same each step: computed once, kept in the partition.
        ctl = controller_for_any()
        rows = ctl.rows.of(batch.reqs) if ctl is not None else None
        cached = rows.cache.get("shift") if rows is not None else None
        if cached is not None:
            return _apply(forward_batch, mode, *cached)
    seqs = [seq_of(req) for req in batch.reqs]
    shifted = sum(1 for s in seqs if _shifts(s))
    if not shifted:
        if rows is not None:
            rows.cache["shift"] = (None, 0)
        return forward_batch
    if mode.is_decode():
        # The token computed is at kv index seq_len - 1 (its stock position).
        lens = forward_batch.seq_lens_cpu.tolist()
        shift = [_offset(s, n - 1) for s, n in zip(seqs, lens, strict=True)]
        # Constant from here on unless a row is still before its pre_until.
        steady = all(s is None or n - 1 >= s.pre_until for s, n in zip(seqs, lens, strict=True))
    else:
        # positions: [extend_num_tokens], each request's extend tokens back to back
        shift = []
        spans = zip(seqs, forward_batch.extend_prefix_lens_cpu, forward_batch.extend_seq_lens_cpu, strict=True)
        for s, start, n in spans:
            if s is not None and s.pre_until > start:
                shift += [_offset(s, i) for i in range(start, start + n)]
            else:
                shift += [_offset(s, start)] * n
        steady = False
    offsets = torch.tensor(shift, dtype=forward_batch.positions.dtype).to(forward_batch.positions.device)
    if rows is not None and steady:
        rows.cache["shift"] = (offsets, shifted)
    return _apply(forward_batch, mode, offsets, shifted)


def _apply(forward_batch, mode, offsets, shifted: int):
    if offsets is not None:
        SHIFTED[mode.name.lower()] += shifted
        forward_batch.positions = forward_batch.positions - offsets
    return forward_batch


def _shifts(seq) -> bool:
    return seq is not None and bool(seq.pos_offset or seq.pre_until)


def _offset(seq, index: int) -> int:
    """Stock position minus the `shared` one for the token at kv index `index`."""
    if seq is None:
        return 0
    return seq.pre_offset if index < seq.pre_until else seq.pos_offset


HOOKS = [
    Hook(
        "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
        Kind.AFTER,
        shift_positions,
    )
]
