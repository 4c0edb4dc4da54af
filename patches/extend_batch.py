"""Hook: `sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill` (AROUND),
SGLang 0.5.23.

The scheduling point where SGLang picks a prefill batch to run before the decode
step. Sequences waiting for a multi-token injection (npr_engine/sched/extend.py) go
first, as their own extend batch: they are mid-reply and hold KV, while new requests
in the waiting queue can start one step later. SGLang merges the batch into the
running batch at the next scheduling point, as it does every prefill batch. While
queued sequences wait for KV, no new request is admitted either (it would take the
slots they wait for); the running batch decodes and frees them. With nothing left
running that could free any, or a step too big for the whole pool, the waiting unit
is aborted with an error naming the pool size (never an allocator exception).

Units retracted whole under KV pressure are rebuilt here first, oldest first, when
they fit (npr_engine/sched/retraction.py); their members then join the extend queue.
While any unit is still held, no new request is admitted either.

Hooks: `sglang.srt.mem_cache.allocation._prefix_kv_indices` and `.write_cache_indices`
(AROUND), SGLang 0.5.23. Where SGLang writes a prefill's KV slots without its Triton
kernel (the CPU engine), it reads each request's prefix out of its row, then writes it
back and the new slots after it, request by request. Our extend batches are over rows
that hold their prefix already (extend.held_rows): their new slots go in with one
indexed write, and the prefix is neither read nor rewritten. Every other batch, and
every batch on a backend with the Triton writer, runs SGLang's code unchanged.
"""

from __future__ import annotations

import torch
from sglang.srt.managers.schedule_batch import NextBatchPlan

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for
from npr_engine.sched.extend import held_rows
from npr_engine.sched.kv import write_extend_slots
from npr_engine.sched.retraction import resume_held


def kv_full_message(scheduler) -> str:
    size = scheduler.token_to_kv_pool_allocator.size
    return (f"KV cache pool is full: the {size}-token pool cannot hold this parallel-reasoning "
            "request's next step beside what its other paths hold. Retry later, ask for fewer "
            "paths or tokens, or start the server with a larger --max-total-tokens.")


def extends_first(original, scheduler, running_batch, *args, **kwargs):
    if scheduler.is_generation:
        ctl = controller_for(scheduler)
        extends = ctl.extends
        if ctl.lifecycle.held:
            resume_held(ctl, running_batch)
        if len(extends):
            batch = extends.take_batch()
            if batch is not None:
                return NextBatchPlan(batch_to_run=batch, running_batch=running_batch)
            stuck = extends.too_big() or (extends.waiting[:1] if running_batch.is_empty() else [])
            for seq in stuck:
                if seq in extends.waiting:
                    ctl.lifecycle.abort(seq.unit, kv_full_message(scheduler), 503)
            if len(extends):
                return NextBatchPlan(batch_to_run=None, running_batch=running_batch)
        if ctl.lifecycle.held:
            return NextBatchPlan(batch_to_run=None, running_batch=running_batch)
    return original(scheduler, running_batch, *args, **kwargs)


_NO_PREFIX = torch.empty((0,), dtype=torch.int64)


def held_prefix(original, batch, req):
    if held_rows():
        return _NO_PREFIX  # in the row already; only write_cache_indices reads it (page size 1)
    return original(batch, req)


def held_rows_write(original, out_cache_loc, req_pool_indices, req_pool_indices_cpu, prefix_lens, prefix_lens_cpu,
                    seq_lens, seq_lens_cpu, extend_lens, extend_lens_cpu, prefix_tensors, req_to_token_pool):
    if not held_rows():
        return original(out_cache_loc, req_pool_indices, req_pool_indices_cpu, prefix_lens, prefix_lens_cpu,
                        seq_lens, seq_lens_cpu, extend_lens, extend_lens_cpu, prefix_tensors, req_to_token_pool)
    write_extend_slots(req_to_token_pool.req_to_token, req_pool_indices_cpu.numpy(), prefix_lens_cpu.numpy(),
                       extend_lens_cpu.numpy(), out_cache_loc)
    return None


_ALLOCATION = "sglang.srt.mem_cache.allocation"
HOOKS = [Hook("sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill", Kind.AROUND, extends_first),
         Hook(f"{_ALLOCATION}._prefix_kv_indices", Kind.AROUND, held_prefix),
         Hook(f"{_ALLOCATION}.write_cache_indices", Kind.AROUND, held_rows_write)]
