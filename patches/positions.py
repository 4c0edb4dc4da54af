"""Hook: `sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new` (AFTER),
SGLang 0.5.23.

Positions are tied to the row: `seq_len - 1` in a decode step, `prefix_len + i` in an
extend. After a join the row holds prefix + every branch, but under the `shared`
policy the continuation's position is the fork position plus the longest branch:
subtract each request's offset here (an extend's tokens all share their request's
offset). `seq_lens` stays the true KV length (attention reads every slot). The decode
CUDA graph copies `forward_batch.positions`, so the offset survives graphs.
"""

from __future__ import annotations

import torch
from sglang.srt.model_executor.forward_batch_info import ForwardMode

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.state import seq_of


def shift_positions(forward_batch, cls, batch, *args, **kwargs):
    mode = forward_batch.forward_mode
    if not (mode.is_decode() or mode == ForwardMode.EXTEND):
        return forward_batch
    offsets = [_offset(req) for req in batch.reqs]
    if not any(offsets):
        return forward_batch
    shift = torch.tensor(offsets, dtype=forward_batch.positions.dtype)
    if mode == ForwardMode.EXTEND:
        # positions: [extend_num_tokens], each request's extend tokens back to back
        shift = shift.repeat_interleave(torch.tensor(forward_batch.extend_seq_lens_cpu))
    forward_batch.positions = forward_batch.positions - shift.to(forward_batch.positions.device)
    return forward_batch


def _offset(req) -> int:
    seq = seq_of(req)
    return seq.pos_offset if seq is not None else 0


HOOKS = [
    Hook(
        "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
        Kind.AFTER,
        shift_positions,
    )
]
