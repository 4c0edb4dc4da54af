"""The `sglang.srt.plugins` entry point: SGLang calls `load()` in every process it starts.

SGLang's loader catches and only logs exceptions from plugins, so a failure here must
stop the process itself: a server running without its hooks would serve plain text
where users asked for parallel reasoning, silently.
"""

from __future__ import annotations

import logging
import os
import sys

from npr_engine import host_clock
from npr_engine.hooks import Hook, HookInstallError, Kind, install
from npr_engine.info import mark_active

logger = logging.getLogger("npr_engine")

# Test-only: registers a hook on a target that does not exist, to prove start-up fails.
SELFTEST_BROKEN_HOOK_ENV = "NPR_SELFTEST_BROKEN_HOOK"


def hooks_to_install() -> list[Hook]:
    from npr_engine.patches import all_hooks

    hooks = all_hooks()
    if os.environ.get(SELFTEST_BROKEN_HOOK_ENV) == "1":
        hooks.append(Hook("sglang.srt.managers.scheduler.Scheduler.npr_no_such_method", Kind.AFTER, print))
    if host_clock.enabled():
        # Registered last: the stock brackets wrap outermost, around our own hooks.
        hooks = [host_clock.timed_hook(h) for h in hooks] + host_clock.profile_hooks()
        host_clock.watch_gc()
    return hooks


def load() -> None:
    try:
        hooks = hooks_to_install()
        install(hooks)
    except HookInstallError as exc:
        message = f"NPR Engine: plugin failed to install its SGLang hooks: {exc}"
        logger.critical(message)
        print(message, file=sys.stderr, flush=True)
        # NOTE: os._exit, not sys.exit: SGLang's loader would catch SystemExit's parent
        # classes only for Exception, but child processes must not run unpatched either.
        os._exit(3)
    mark_active([h.name for h in hooks])
    logger.info("NPR Engine plugin active: %d hooks", len(hooks))
