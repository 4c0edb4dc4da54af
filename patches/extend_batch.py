"""Hook: `sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill` (AROUND),
SGLang 0.5.23.

The scheduling point where SGLang picks a prefill batch to run before the decode
step. Sequences waiting for a multi-token injection (npr_engine/sched/extend.py) go
first, as their own extend batch: they are mid-reply and hold KV, while new requests
in the waiting queue can start one step later. SGLang merges the batch into the
running batch at the next scheduling point, as it does every prefill batch.
"""

from __future__ import annotations

from sglang.srt.managers.schedule_batch import NextBatchPlan

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for


def extends_first(original, scheduler, running_batch, *args, **kwargs):
    if scheduler.is_generation:
        extends = controller_for(scheduler).extends
        if len(extends):
            batch = extends.take_batch()
            if batch is not None:
                return NextBatchPlan(batch_to_run=batch, running_batch=running_batch)
    return original(scheduler, running_batch, *args, **kwargs)


HOOKS = [Hook("sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill", Kind.AROUND, extends_first)]
