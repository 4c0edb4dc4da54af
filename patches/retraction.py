"""Hooks: `ScheduleBatch._get_decode_retraction_order` (AROUND) and
`ScheduleBatch.retract_decode` (AFTER), SGLang 0.5.23.

Under KV memory pressure SGLang retracts running requests and re-queues them for a
fresh prefill. A branch or a joined parent cannot be re-prefilled (their KV does not
follow from their token ids causally), so: other requests are retracted first, and a
unit member that still has to go turns into an abort of its whole unit with a clear
error (npr_engine/sched/lifecycle.py).
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for_any
from npr_engine.sched.lifecycle import after_retract, retraction_order

BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"


def members_last(original, reqs, *args, **kwargs):
    return retraction_order(original(reqs, *args, **kwargs), reqs)


def abort_retracted_units(ret, batch, *args, **kwargs):
    retracted, ratio, to_abort = ret
    ctl = controller_for_any()
    if ctl is None:
        return ret
    retracted, to_abort = after_retract(ctl.lifecycle, retracted, to_abort)
    return retracted, ratio, to_abort


HOOKS = [
    Hook(f"{BATCH}._get_decode_retraction_order", Kind.AROUND, members_last),
    Hook(f"{BATCH}.retract_decode", Kind.AFTER, abort_retracted_units),
]
