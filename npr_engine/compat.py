"""SGLang configurations NPR Engine refuses to start with, checked on resolved arguments.

SGLang's argument resolution changes what the user passed (a backend's page size, a
model's defaults), so the check runs on the resolved record (patches/server_args.py).
Each entry names the flag, why fork/join cannot run under it yet, and what to use
instead; a refused configuration never starts, so it can never answer wrongly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class UnsupportedServerArgs(ValueError):
    """SGLang arguments NPR Engine cannot serve correctly."""


@dataclass(frozen=True)
class Refusal:
    flag: str
    refused: Callable[[object], bool]
    why: str
    instead: str

    def message(self, args) -> str:
        flag = self.flag.format(a=args, env=os.environ.get("SGLANG_RUST_SERVER", ""))
        return f"NPR Engine cannot run with {flag}: {self.why}; {self.instead}"


def _get(args, name: str, default=None):
    return getattr(args, name, default)


def _more_than_one(name: str) -> Callable[[object], bool]:
    return lambda a: (_get(a, name) or 1) > 1


_FP8 = ("fp8", "fp4", "int8", "int4")

REFUSALS = (
    Refusal("--page-size {a.page_size} (resolved for --attention-backend {a.attention_backend})",
            lambda a: _get(a, "page_size", 1) not in (None, 1),
            "branches share the parent's KV token by token, and with pages of several tokens "
            "sibling branches would write into the same page",
            "use an attention backend that runs with page size 1 (fa3 or triton on NVIDIA GPUs, "
            "torch_native on CPU) and --page-size 1"),
    Refusal("--speculative-algorithm {a.speculative_algorithm}", lambda a: bool(_get(a, "speculative_algorithm")),
            "branches carry no draft state and fork/join reads one token per request per step",
            "serve without speculative decoding"),
    Refusal("--pp-size {a.pp_size}", _more_than_one("pp_size"),
            "fork and join run at step boundaries of one scheduler", "use one device per model copy"),
    Refusal("--dcp-size {a.dcp_size}", _more_than_one("dcp_size"),
            "decode context parallelism scales the allocator's pages", "leave it at 1"),
    Refusal("--attn-cp-size {a.attn_cp_size}", _more_than_one("attn_cp_size"),
            "context-parallel attention splits a row NPR Engine aliases between branches", "leave it at 1"),
    Refusal("--enable-dp-attention", lambda a: bool(_get(a, "enable_dp_attention")),
            "branches are injected into one scheduler's batch, not DP-attention groups",
            "use --dp-size without DP attention"),
    Refusal("--disaggregation-mode {a.disaggregation_mode}",
            lambda a: _get(a, "disaggregation_mode", "null") not in (None, "null"),
            "a fork needs the prefill and decode KV in one pool", "serve prefill and decode together"),
    Refusal("--skip-tokenizer-init", lambda a: bool(_get(a, "skip_tokenizer_init")),
            "tags are found in the decoded text, which needs the tokenizer", "serve with the tokenizer"),
    Refusal("--disable-radix-cache", lambda a: bool(_get(a, "disable_radix_cache")),
            "a fork keeps the prompt alive through the parent's radix-tree lock",
            "leave the radix cache on"),
    Refusal("--enable-hierarchical-cache", lambda a: bool(_get(a, "enable_hierarchical_cache")),
            "HiCache may move a parked parent's prefix to host memory while its branches read it",
            "leave HiCache off"),
    Refusal("--enable-lora / --lora-paths", lambda a: bool(_get(a, "enable_lora") or _get(a, "lora_paths")),
            "LoRA adapters are not tested with branches yet", "serve merged weights"),
    Refusal("--enable-torch-compile", lambda a: bool(_get(a, "enable_torch_compile")),
            "not tested with the shared-position offsets yet", "serve without torch.compile"),
    Refusal("--kv-cache-dtype {a.kv_cache_dtype}",
            lambda a: any(k in str(_get(a, "kv_cache_dtype", "auto")) for k in _FP8),
            "quantized KV is not tested with branch KV and the npr_triton kernels yet",
            "use --kv-cache-dtype auto"),
    Refusal("--enable-priority-scheduling (with preemption)",
            lambda a: bool(_get(a, "enable_priority_scheduling")) and not _get(a, "disable_priority_preemption"),
            "preemption releases a request without the unit-aware retraction, so a branch could be "
            "re-queued alone", "add --disable-priority-preemption"),
    Refusal("SGLANG_RUST_SERVER={env}", lambda a: os.environ.get("SGLANG_RUST_SERVER", "") not in ("", "0"),
            "NPR Engine's HTTP extensions (the parallel field, traces, branch deltas) live in the Python "
            "server", "unset SGLANG_RUST_SERVER"),
)


def refusals(args) -> list[str]:
    """Messages for every refused setting of resolved server arguments (and model kind)."""
    return [r.message(args) for r in REFUSALS if r.refused(args)] + model_refusals(_get(args, "model_path"))


# Architectures with recurrent (Mamba-style or linear-attention) layers, by name.
_RECURRENT_ARCHS = ("Mamba", "Jamba", "FalconH1", "NemotronH", "Qwen3Next", "Lfm2", "Zamba", "Plamo2",
                    "GraniteMoeHybrid", "KimiLinear", "MiniMaxText01")
_ATTENTION_LAYERS = {"full_attention", "sliding_attention", "attention"}


def model_refusals(model_path) -> list[str]:
    """Model kinds fork/join cannot serve yet, read from a local model folder's config.json
    (a hub id is not read here: SGLang resolves it later)."""
    if not model_path:
        return []
    path = Path(str(model_path)) / "config.json"
    if not path.is_file():
        return []
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # SGLang reports an unreadable config itself
    text = config.get("text_config") or config
    archs = [str(a) for a in config.get("architectures") or []]
    problems = []
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    if isinstance(rope, dict) and "mrope_section" in rope:
        problems.append(
            f"NPR Engine cannot run with this model ({', '.join(archs) or 'MRoPE'}: multimodal rotary "
            "positions): branch positions are shifted on the 1-D positions only, not on mrope_positions; "
            "serve a text model with standard RoPE")
    layer_types = set(text.get("layer_types") or [])
    if (any(k in a for a in archs for k in _RECURRENT_ARCHS) or "hybrid_override_pattern" in text
            or layer_types - _ATTENTION_LAYERS):
        problems.append(
            f"NPR Engine cannot run with this model ({', '.join(archs) or 'hybrid'}: recurrent or "
            "linear-attention layers): a branch row would get no copy of the parent's recurrent "
            "state; serve a model whose every layer is attention")
    return problems


def check_resolved(args) -> None:
    problems = refusals(args)
    if problems:
        raise UnsupportedServerArgs(" | ".join(problems))


# Backends whose resolution sets a page size above 1 (SGLang 0.5.23 arg_groups/overrides.py:
# trtllm_mha, trtllm_mla, cutedsl_mla and hpc_ops 64; fa4 and intel_xpu 128).
PAGE_BOUND_BACKENDS = frozenset({"trtllm_mha", "trtllm_mla", "cutedsl_mla", "hpc_ops", "fa4", "intel_xpu"})

# The default SGLang chose and the one NPR Engine runs instead, when it had to change it.
backend_choice: dict[str, str] = {}


def page_one_backend(stock: str, has_flashinfer: bool, model_config) -> str:
    """A default attention backend that runs with page size 1, given SGLang's own default.

    SGLang's default is kept unless it needs larger pages: on SM100 its MHA default is
    trtllm_mha (fa4 for models with unequal K/V widths), which FlashInfer replaces where
    it can serve the model and Triton elsewhere; on Hopper it is fa3, kept."""
    if stock not in PAGE_BOUND_BACKENDS:
        return stock
    flashinfer_ok = (has_flashinfer and not getattr(model_config, "has_attention_sinks", False)
                     and not getattr(model_config, "has_asymmetric_kv", False))
    return "flashinfer" if flashinfer_ok else "triton"
