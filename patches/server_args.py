"""Hook: `sglang.srt.server_args.ServerArgs.resolve_once` (BEFORE), SGLang 0.5.23.

Fork and join need page size 1 (a branch row aliases the parent's slots token by
token) and the non-overlap scheduler (under overlap, step t+1 is already launched when
step t's tokens are seen, so a fork would be one token late). Both are settled here,
before SGLang resolves its arguments, so the HTTP server and `sglang.Engine` alike get
a configuration the engine is correct under; the change is logged, never silent.
"""

from __future__ import annotations

import logging

from npr_engine.hooks import Hook, Kind

logger = logging.getLogger("npr_engine")


class UnsupportedServerArgs(ValueError):
    """SGLang arguments NPR Engine cannot serve correctly."""


def require_fork_safe_args(server_args, *args, **kwargs):
    if getattr(server_args, "_resolution_finished", False):
        return None
    page_size = getattr(server_args, "page_size", None)
    if page_size not in (None, 1):
        raise UnsupportedServerArgs(
            f"NPR Engine needs --page-size 1 (got {page_size}): branches share KV token by token"
        )
    server_args.page_size = 1
    if not getattr(server_args, "disable_overlap_schedule", False):
        logger.info("NPR Engine: overlap scheduling turned off (fork/join run at step boundaries)")
        server_args.disable_overlap_schedule = True
    return None


HOOKS = [
    Hook(
        "sglang.srt.server_args.ServerArgs.resolve_once",
        Kind.BEFORE,
        require_fork_safe_args,
    )
]
