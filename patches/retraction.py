"""Hooks: `ScheduleBatch._get_decode_retraction_order` (AROUND),
`ScheduleBatch.release_req` (AROUND), `ScheduleBatch.retract_decode` (AFTER),
`Scheduler.pause_generation` (AROUND) and `Scheduler.is_fully_idle` (AFTER),
SGLang 0.5.23.

Under KV memory pressure SGLang retracts running requests and re-queues them for a
fresh prefill. A branch or a joined parent cannot be re-prefilled from its token ids
(their KV does not follow from them causally), so: other requests are retracted first,
and when SGLang releases a unit member, the whole unit is held instead and later
rebuilt by prefill (npr_engine/sched/retraction.py); after the retraction its members
are kept out of SGLang's waiting queue, its aborts and the batch. A pause in `retract`
mode (an RL trainer's weight update) holds every unit the same way, so each is rebuilt
under the new weights when generation continues. A scheduler with
held units is not idle (it would sleep until the next request, and never rebuild them).
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for_any
from npr_engine.sched.lifecycle import is_unit_member
from npr_engine.sched.retraction import after_retract, hold, hold_all, retraction_order
from npr_engine.sched.state import seq_of

BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"
SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"


def members_last(original, reqs, *args, **kwargs):
    return retraction_order(original(reqs, *args, **kwargs), reqs)


def hold_units(original, batch, idx, *args, **kwargs):
    req = batch.reqs[idx]
    ctl = controller_for_any()
    if ctl is None or not is_unit_member(req):
        return original(batch, idx, *args, **kwargs)
    hold(ctl, seq_of(req).unit)
    return True  # "resumable": the unit is held whole, not re-queued (after_retract)


def keep_held_units(ret, batch, *args, **kwargs):
    retracted, ratio, to_abort = ret
    ctl = controller_for_any()
    if ctl is None:
        return ret
    retracted, to_abort = after_retract(ctl, batch, retracted, to_abort)
    return retracted, ratio, to_abort


def hold_units_on_pause(original, scheduler, recv_req, *args, **kwargs):
    if scheduler.is_generation and getattr(recv_req, "mode", None) == "retract":
        ctl = controller_for_any()
        if ctl is not None:
            hold_all(ctl, scheduler.running_batch, scheduler.last_batch)
    return original(scheduler, recv_req, *args, **kwargs)


def busy_while_held(ret, scheduler, *args, **kwargs):
    ctl = controller_for_any()
    return ret and not (ctl is not None and ctl.lifecycle.held)


HOOKS = [
    Hook(f"{BATCH}._get_decode_retraction_order", Kind.AROUND, members_last),
    Hook(f"{BATCH}.release_req", Kind.AROUND, hold_units),
    Hook(f"{BATCH}.retract_decode", Kind.AFTER, keep_held_units),
    Hook(f"{SCHEDULER}.pause_generation", Kind.AROUND, hold_units_on_pause),
    Hook(f"{SCHEDULER}.is_fully_idle", Kind.AFTER, busy_while_held),
]
