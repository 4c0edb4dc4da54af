"""Hook: `sglang.srt.managers.scheduler.Scheduler.get_init_info` (AFTER), SGLang 0.5.23.

The scheduler's start-up handshake is the one message every front end (HTTP server,
`sglang.Engine`) reads from each scheduler process. Adding our plugin's status there
lets `/health` and tests confirm the hooks are live inside the scheduler, not merely
in the process that launched it.
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.info import plugin_status


def add_plugin_status(result, scheduler, *args, **kwargs):
    result["npr_plugin"] = plugin_status()
    return result


HOOKS = [
    Hook(
        "sglang.srt.managers.scheduler.Scheduler.get_init_info",
        Kind.AFTER,
        add_plugin_status,
    )
]
