"""Hook: `sglang.srt.server_args.ServerArgs.resolve_once` (AROUND), SGLang 0.5.23.

Fork and join need page size 1 (a branch row aliases the parent's slots token by
token) and the non-overlap scheduler (under overlap, step t+1 is already launched when
step t's tokens are seen, so a fork would be one token late). Both are settled before
SGLang resolves its arguments, so the HTTP server and `sglang.Engine` alike get a
configuration the engine is correct under; the change is logged, never silent. After
resolution (which may change them again: a backend's own page size) the resolved
record is checked against every configuration NPR Engine refuses (npr_engine/compat.py).

Second hook: `sglang.srt.arg_groups.overrides.get_default_attn_backend` (AROUND), where
SGLang picks the attention backend a user did not name. Where its pick needs pages
larger than 1 (trtllm_mha on SM100 GPUs, say), a page-size-1 backend is run instead, and
the swap is logged and shown in `/npr/info`. A backend the user names is never changed
(one that needs larger pages is refused, with what to use).
"""

from __future__ import annotations

import logging

from npr_engine import compat
from npr_engine.compat import UnsupportedServerArgs, check_resolved, page_one_backend
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


def page_one_default_backend(original, server_args, use_mla_backend, model_config, *args, **kwargs):
    from sglang.srt.runtime_context import get_platform

    stock = original(server_args, use_mla_backend, model_config, *args, **kwargs)
    chosen = page_one_backend(stock, bool(get_platform().has_flashinfer), model_config)
    if chosen != stock:
        logger.info("NPR Engine: attention backend %s instead of SGLang's default %s (which needs pages "
                    "larger than 1); name one with --attention-backend to choose", chosen, stock)
        compat.backend_choice.update(sglang_default=stock, chosen=chosen)
    return chosen


HOOKS = [
    Hook(
        "sglang.srt.server_args.ServerArgs.resolve_once",
        Kind.AROUND,
        require_fork_safe_args,
    ),
    Hook(
        "sglang.srt.arg_groups.overrides.get_default_attn_backend",
        Kind.AROUND,
        page_one_default_backend,
    ),
]
