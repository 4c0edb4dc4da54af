"""Hook: `sglang.srt.managers.scheduler.Scheduler.abort_request` (AROUND), SGLang 0.5.23.

`/abort_request` and client disconnects reach the scheduler here; SGLang matches rids
by prefix over its queues and running batch. A parked parent is in neither, and its
branches carry their own rids, so the stock code alone would orphan the unit. We
abort every matching unit as a whole first (npr_engine/sched/lifecycle.py), then let
SGLang handle everything else.
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for


def abort_units_first(original, scheduler, recv_req, *args, **kwargs):
    if scheduler.is_generation:
        lifecycle = controller_for(scheduler).lifecycle
        message = getattr(recv_req, "abort_message", None) or "Aborted"
        for unit in lifecycle.matching(recv_req.rid or "", bool(recv_req.abort_all)):
            lifecycle.abort(unit, message, None)
    return original(scheduler, recv_req, *args, **kwargs)


HOOKS = [Hook("sglang.srt.managers.scheduler.Scheduler.abort_request", Kind.AROUND, abort_units_first)]
