"""Hooks: `sglang.srt.managers.scheduler.Scheduler.process_batch_result` (BEFORE and AFTER),
SGLang 0.5.23.

The step boundary of the non-overlap scheduler: the batch has run, its sampled tokens
are on the host, and the next batch has not been prepared. BEFORE replaces sampled
tokens by injected ones (they must be what the stock code appends, streams and relays
to the next step); AFTER applies fork, branch-close and join events
(npr_engine/sched/controller.py).
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for

TARGET = "sglang.srt.managers.scheduler.Scheduler.process_batch_result"


def inject_tokens(scheduler, batch, result, *args, **kwargs):
    if scheduler.is_generation:
        controller_for(scheduler).before_result(batch, result)


def apply_events(ret, scheduler, batch, result, *args, **kwargs):
    if scheduler.is_generation:
        controller_for(scheduler).after_result(batch, result)
    return ret


HOOKS = [Hook(TARGET, Kind.BEFORE, inject_tokens), Hook(TARGET, Kind.AFTER, apply_events)]
