"""Hook: `sglang.srt.managers.scheduler.Scheduler.get_init_info` (AFTER), SGLang 0.5.23.

The scheduler's start-up handshake is the one message every front end (HTTP server,
`sglang.Engine`) reads from each scheduler process. Adding our plugin's status there
lets `/health` and tests confirm the hooks are live inside the scheduler, not merely
in the process that launched it. With `--dp-size` the front end reads the data-parallel
controller's handshake instead, which merges its schedulers' own: the second hook
carries ours over, active only if every scheduler's plugin is.
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.info import plugin_status


def add_plugin_status(result, scheduler, *args, **kwargs):
    result["npr_plugin"] = plugin_status()
    return result


def merge_plugin_status(result, controller, *args, **kwargs):
    statuses = [info.get("npr_plugin") or {} for info in controller._scheduler_init_infos]
    if statuses:
        result["npr_plugin"] = {**statuses[0], "active": all(s.get("active") for s in statuses),
                                "schedulers": len(statuses)}
    return result


HOOKS = [
    Hook(
        "sglang.srt.managers.scheduler.Scheduler.get_init_info",
        Kind.AFTER,
        add_plugin_status,
    ),
    Hook(
        "sglang.srt.managers.data_parallel_controller.DataParallelController.get_init_info",
        Kind.AFTER,
        merge_plugin_status,
    ),
]
