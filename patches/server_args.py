"""Hook: `sglang.srt.server_args.ServerArgs.resolve_once` (AROUND), SGLang 0.5.23.

Fork and join need page size 1 (a branch row aliases the parent's slots token by
token) and the non-overlap scheduler (under overlap, step t+1 is already launched when
step t's tokens are seen, so a fork would be one token late). Both are settled before
SGLang resolves its arguments, so the HTTP server and `sglang.Engine` alike get a
configuration the engine is correct under; the change is logged, never silent. After
resolution (which may change them again: a backend's own page size) the resolved
record is checked against every configuration NPR Engine refuses (npr_engine/compat.py).
"""

from __future__ import annotations

import logging

from npr_engine.compat import UnsupportedServerArgs, check_resolved
from npr_engine.hooks import Hook, Kind

logger = logging.getLogger("npr_engine")

__all__ = ["UnsupportedServerArgs", "require_fork_safe_args"]


def require_fork_safe_args(original, server_args, *args, **kwargs):
    if getattr(server_args, "_resolution_finished", False):
        return original(server_args, *args, **kwargs)
    page_size = getattr(server_args, "page_size", None)
    if page_size not in (None, 1):
        raise UnsupportedServerArgs(
            f"NPR Engine needs --page-size 1 (got {page_size}): branches share KV token by token"
        )
    server_args.page_size = 1
    if not getattr(server_args, "disable_overlap_schedule", False):
        logger.info("NPR Engine: overlap scheduling turned off (fork/join run at step boundaries)")
        server_args.disable_overlap_schedule = True
    result = original(server_args, *args, **kwargs)
    check_resolved(server_args)
    return result


HOOKS = [
    Hook(
        "sglang.srt.server_args.ServerArgs.resolve_once",
        Kind.AROUND,
        require_fork_safe_args,
    )
]
