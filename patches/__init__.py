"""SGLang hooks, one module per hooked upstream function (installed as npr_engine.patches).

Each module exposes `HOOKS: list[Hook]`; every Hook names its upstream target and the
SGLang version it was written against. `cpu/` holds the CPU-enablement shims that
`./install.sh cpu` copies into site-packages (they are not hooks and never import us).
"""

from __future__ import annotations

import importlib

from npr_engine.hooks import Hook

# Order matters only for readability: each module hooks a distinct target.
HOOK_MODULES = (
    "server_args",
    "scheduler_info",
    "http_routes",
    "internal_state",
    "batch_result",
    "extend_batch",
    "output_streamer",
    "positions",
    "tokenizer_meta",
    "openai_response",
    "detok_closing",
    "detok_tags",
    "sampling_params",
    "attention_backend",
    "abort",
    "retraction",
    "admission",
    "radix_insert",
    "stop_strings",
    "reasoning",
    "invariants",
    "input_guards",
)


def all_hooks() -> list[Hook]:
    hooks: list[Hook] = []
    for name in HOOK_MODULES:
        hooks.extend(importlib.import_module(f"{__name__}.{name}").HOOKS)
    return hooks
