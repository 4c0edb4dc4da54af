"""Hook: `sglang.srt.managers.scheduler.Scheduler.get_internal_state` (AFTER), SGLang 0.5.23.

Adds the scheduler's KV accounting (`npr_kv`, see npr_engine/kv_report.py) to the
internal state SGLang already serves through `/server_info` and
`Engine.get_server_info()`, so tests and operators can prove nothing leaked, and what
the `npr_triton` backend routed to the shared-prefix kernel (`npr_attn_routed`, see
patches/attention_backend.py; zeros under other backends), and how many rows had their
positions shifted per forward mode (`npr_positions_shifted`, patches/positions.py), how
many rows the controller skipped as calm (`npr_calm_row_steps`, npr_engine/sched/calm.py),
and with `NPR_HOST_PROFILE=1` where the scheduler thread's time went (`npr_host_time`,
npr_engine/host_clock.py).
"""

from __future__ import annotations

from dataclasses import asdict

from npr_engine.patches.attention_backend import ROUTED
from npr_engine.patches.positions import SHIFTED

from npr_engine import host_clock
from npr_engine.hooks import Hook, Kind
from npr_engine.kv_report import kv_report
from npr_engine.sched.controller import controller_for


def add_kv_report(result, scheduler, *args, **kwargs):
    result.internal_state["npr_kv"] = kv_report(scheduler)
    result.internal_state["npr_attn_routed"] = asdict(ROUTED)
    result.internal_state["npr_positions_shifted"] = dict(SHIFTED)
    if host_clock.enabled():
        result.internal_state["npr_host_time"] = host_clock.CLOCK.report()
    events = None
    if scheduler.is_generation:
        ctl = controller_for(scheduler)
        result.internal_state["npr_calm_row_steps"] = ctl.rows.calm_row_steps
        events = ctl.debug_events
    if events is not None:
        result.internal_state["npr_debug"] = list(events)
    return result


HOOKS = [
    Hook(
        "sglang.srt.managers.scheduler.Scheduler.get_internal_state",
        Kind.AFTER,
        add_kv_report,
    )
]
