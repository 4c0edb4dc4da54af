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
"""

from __future__ import annotations

from sglang.srt.managers.schedule_batch import NextBatchPlan

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for
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


HOOKS = [Hook("sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill", Kind.AROUND, extends_first)]
