"""Hook: `sglang.srt.managers.schedule_batch.Req.owned_kv_len` (AROUND), SGLang 0.5.23.

A reply with joined blocks stays out of the radix tree while it runs
(`skip_radix_cache_insert`: its joined KV, with shared positions and paths that never
saw each other, does not follow from its token ids causally). The part before its first
fork does, so a multi-turn client that sends the reply back hits the cache for it.

`release_kv_cache` asks a finished request how much KV it owns first, then inserts that
much into the tree (when it checkpoints) and frees the row. For a finished root that
forked, the KV after its first fork is freed here, the row is cut back to the causal
part, and the insert is let through for it; SGLang then treats the row as a plain
finished request of that length.
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for_any
from npr_engine.sched.state import seq_of


def causal_part_only(original, req, *args, **kwargs):
    seq = seq_of(req)
    if (seq is not None and not seq.is_branch and seq.unit.causal_len is not None
            and req.finished_len is not None and req.kv.holds_kv):
        _cut_to_causal_part(req, seq.unit.causal_len)
    return original(req, *args, **kwargs)


def _cut_to_causal_part(req, causal_len: int) -> None:
    kv = req.kv
    if kv.kv_allocated_len > causal_len:
        scheduler = controller_for_any().scheduler
        slots = scheduler.req_to_token_pool.req_to_token[kv.req_pool_idx, causal_len:kv.kv_allocated_len]
        # (a view: SGLang 0.5.23's free copies it, at once or into its free group)
        scheduler.token_to_kv_pool_allocator.free(slots)
        kv.kv_committed_len = kv.kv_allocated_len = causal_len
    # NOTE: release_kv_cache reads skip_radix_cache_insert right after asking us.
    req.skip_radix_cache_insert = False


HOOKS = [Hook("sglang.srt.managers.schedule_batch.Req.owned_kv_len", Kind.AROUND, causal_part_only)]
