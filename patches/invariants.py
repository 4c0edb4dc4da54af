"""Hook: `SchedulerInvariantChecker._requests_owning_rows` (AFTER), SGLang 0.5.23.

SGLang's busy-time KV invariant check (`SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY=1`)
counts the KV of the requests it can see in its batches. A parked parent and finished
branches waiting for their join hold rows and slots outside every batch; we add them,
so the check stays exact (and silent) while blocks run.
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for_any
from npr_engine.sched.lifecycle import unit_seqs


def add_parked_requests(owners, checker, *args, **kwargs):
    ctl = controller_for_any()
    if ctl is None:
        return owners
    seen = {id(r) for r in owners}
    for unit in ctl.lifecycle.open_units.values():
        for seq in unit_seqs(unit.root):
            req = seq.req
            if id(req) not in seen and req.kv.holds_kv:
                seen.add(id(req))
                owners.append(req)
    return owners


HOOKS = [
    Hook(
        "sglang.srt.managers.scheduler_components.invariant_checker.SchedulerInvariantChecker._requests_owning_rows",
        Kind.AFTER,
        add_parked_requests,
    )
]
