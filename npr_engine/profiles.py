"""Launch profiles: the SGLang flags each kind of machine needs under NPR Engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROFILES = ("cpu", "gpu")

# Flags both profiles share. Page size 1 and the non-overlap scheduler are also forced
# by the plugin (patches/server_args.py) so that sglang.Engine users get them too.
COMMON_FLAGS = [
    "--page-size", "1", "--enable-metrics", "--disable-overlap-schedule", "--reasoning-parser", "npr",
]
# NOTE: --sleep-on-idle: an idle SGLang scheduler otherwise busy-polls its sockets, a
# whole core on a CPU machine whose cores the model's threads need (measured: 1.0 core
# idle without it, 0.02 with; SGLang's poller wakes on the next request at once).
CPU_FLAGS = ["--device", "cpu", "--attention-backend", "torch_native", "--disable-cuda-graph", "--sleep-on-idle"]

# Share of physical memory the CPU profile gives the KV pool, and its bounds in tokens.
_CPU_KV_MEMORY_FRACTION = 0.10
_CPU_KV_TOKENS_MIN, _CPU_KV_TOKENS_MAX = 2048, 65536


def default_profile() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def kv_bytes_per_token(model_dir: Path, dtype_bytes: int = 4) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def cpu_max_total_tokens(model_dir: Path) -> int:
    """A KV pool that fits the machine: ~10% of RAM, at worst float32 KV."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tokens = int(total * _CPU_KV_MEMORY_FRACTION) // kv_bytes_per_token(model_dir)
    return max(_CPU_KV_TOKENS_MIN, min(_CPU_KV_TOKENS_MAX, tokens))


def has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def sglang_flags(profile: str, model_dir: Path, passthrough: list[str]) -> list[str]:
    flags = _without_overridden(COMMON_FLAGS, passthrough)
    if profile == "cpu":
        flags += _without_overridden(CPU_FLAGS, passthrough)
        if not has_flag(passthrough, "--max-total-tokens"):
            flags += ["--max-total-tokens", str(cpu_max_total_tokens(model_dir))]
    return flags + passthrough


def _without_overridden(flags: list[str], passthrough: list[str]) -> list[str]:
    """Drop a default flag (and its value) when the user passed that flag themselves."""
    out: list[str] = []
    i = 0
    while i < len(flags):
        flag = flags[i]
        takes_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        if not has_flag(passthrough, flag):
            out += flags[i : i + 2] if takes_value else [flag]
        i += 2 if takes_value else 1
    return out
