"""Configurations NPR Engine refuses at start-up (npr_engine/compat.py), on resolved
arguments: each message names the flag, NPR Engine and what to use instead."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from npr_engine.compat import REFUSALS, UnsupportedServerArgs, check_resolved, refusals

# What SGLang 0.5.23 resolves for the CPU profile (checked: no refusal).
RESOLVED = dict(page_size=1, attention_backend="torch_native", speculative_algorithm=None, tp_size=1, pp_size=1,
                dcp_size=1, attn_cp_size=1, enable_dp_attention=False, disaggregation_mode="null",
                skip_tokenizer_init=False, disable_radix_cache=False, enable_hierarchical_cache=False,
                enable_mixed_chunk=False, enable_lora=None, lora_paths=None, enable_torch_compile=False,
                kv_cache_dtype="auto", enable_priority_scheduling=False, disable_priority_preemption=False)

CASES = [
    ({"page_size": 64, "attention_backend": "trtllm_mha"},
     "--page-size 64 (resolved for --attention-backend trtllm_mha)"),
    ({"speculative_algorithm": "STANDALONE"}, "--speculative-algorithm STANDALONE"),
    ({"pp_size": 2}, "--pp-size 2"),
    ({"dcp_size": 2}, "--dcp-size 2"),
    ({"attn_cp_size": 2}, "--attn-cp-size 2"),
    ({"enable_dp_attention": True}, "--enable-dp-attention"),
    ({"disaggregation_mode": "prefill"}, "--disaggregation-mode prefill"),
    ({"skip_tokenizer_init": True}, "--skip-tokenizer-init"),
    ({"disable_radix_cache": True}, "--disable-radix-cache"),
    ({"enable_hierarchical_cache": True}, "--enable-hierarchical-cache"),
    ({"lora_paths": ["a=/x"]}, "--enable-lora / --lora-paths"),
    ({"enable_torch_compile": True}, "--enable-torch-compile"),
    ({"kv_cache_dtype": "fp8_e4m3"}, "--kv-cache-dtype fp8_e4m3"),
    ({"enable_priority_scheduling": True}, "--enable-priority-scheduling (with preemption)"),
]


def test_the_resolved_cpu_profile_is_accepted():
    assert refusals(SimpleNamespace(**RESOLVED)) == []
    check_resolved(SimpleNamespace(**RESOLVED))


@pytest.mark.parametrize(("change", "flag"), CASES, ids=[c[1].split()[0] for c in CASES])
def test_each_refused_setting_names_its_flag_and_what_to_use(change, flag):
    (message,) = refusals(SimpleNamespace(**{**RESOLVED, **change}))
    assert message.startswith(f"NPR Engine cannot run with {flag}: ")
    assert "; " in message  # ...: why; what to use instead
    with pytest.raises(UnsupportedServerArgs, match="NPR Engine"):
        check_resolved(SimpleNamespace(**{**RESOLVED, **change}))


def test_every_refusal_has_a_case():
    assert len(CASES) + 1 == len(REFUSALS)  # + SGLANG_RUST_SERVER, below


def test_rust_server_env_is_refused(monkeypatch):
    monkeypatch.setenv("SGLANG_RUST_SERVER", "1")
    (message,) = refusals(SimpleNamespace(**RESOLVED))
    assert message.startswith("NPR Engine cannot run with SGLANG_RUST_SERVER=1: ")


def test_priority_scheduling_without_preemption_is_accepted():
    args = SimpleNamespace(**{**RESOLVED, "enable_priority_scheduling": True, "disable_priority_preemption": True})
    assert refusals(args) == []


def test_offline_engine_raises_the_typed_error(default_model_dir):
    import sglang

    with pytest.raises(UnsupportedServerArgs, match="--disable-radix-cache"):
        sglang.Engine(model_path=str(default_model_dir), device="cpu", attention_backend="torch_native",
                      disable_cuda_graph=True, max_total_tokens=1024, disable_radix_cache=True, log_level="error")


def test_docker_base_image_is_the_pinned_sglang_release():
    import re
    from importlib.metadata import version
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pinned = re.search(r"^SGLANG_VERSION=(\S+)$", (repo / "install.sh").read_text(), re.M).group(1)
    (base,) = re.findall(r"^FROM (\S+)$", (repo / "Dockerfile").read_text(), re.M)
    assert pinned == version("sglang") == "0.5.23"
    assert base == f"lmsysorg/sglang:v{pinned}-cu130"  # the CUDA 13 build, named as SGLang tags it


def _default_backend(platform: dict, use_mla: bool = False, **model) -> tuple[str, str]:
    """(SGLang 0.5.23's own default, ours) for a Qwen3-like model on the given GPU."""
    from npr_engine.patches.server_args import page_one_default_backend
    from sglang.srt.arg_groups import model_override_base
    from sglang.srt.runtime_context import override_platform

    args = SimpleNamespace(speculative_eagle_topk=None, speculative_algorithm=None, page_size=1, tp_size=1)
    config = SimpleNamespace(**{"hf_config": SimpleNamespace(architectures=["Qwen3ForCausalLM"]),
                                "has_asymmetric_kv": False, "has_attention_sinks": False, **model})
    # SGLang's own function: the plugin may already have wrapped it in this process.
    stock = inspect.unwrap(model_override_base.get_default_attn_backend)
    facts = {"is_hopper_with_cuda_12_3": False, "is_sm100": False, "is_hip": False, "has_flashinfer": True,
             **platform}
    with override_platform(**facts):
        return stock(args, use_mla, config), page_one_default_backend(stock, args, use_mla, config)


SM90, SM100, SM120 = {"is_hopper_with_cuda_12_3": True}, {"is_sm100": True}, {}


@pytest.mark.parametrize(("platform", "use_mla", "model", "expected"), [
    (SM90, False, {}, ("fa3", "fa3")),
    (SM100, False, {}, ("trtllm_mha", "flashinfer")),
    (SM100, False, {"has_asymmetric_kv": True}, ("fa4", "triton")),
    ({**SM100, "has_flashinfer": False}, False, {}, ("trtllm_mha", "triton")),
    (SM120, False, {}, ("flashinfer", "flashinfer")),
    (SM100, True, {}, ("flashinfer", "flashinfer")),
], ids=["sm90", "sm100", "sm100-asymmetric-kv", "sm100-no-flashinfer", "sm120", "sm100-mla"])
def test_default_backend_has_page_size_one_on_every_generation(platform, use_mla, model, expected):
    from npr_engine.compat import PAGE_BOUND_BACKENDS

    assert _default_backend(platform, use_mla, **model) == expected
    assert expected[1] not in PAGE_BOUND_BACKENDS


@pytest.mark.parametrize(("config", "refused"), [
    ({"architectures": ["Qwen3ForCausalLM"], "rope_scaling": None}, None),
    ({"architectures": ["Gemma3ForCausalLM"], "layer_types": ["sliding_attention", "full_attention"]}, None),
    ({"architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "text_config": {"rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}}, "mrope_positions"),
    ({"architectures": ["Qwen3NextForCausalLM"]}, "recurrent state"),
    ({"architectures": ["NemotronHForCausalLM"], "hybrid_override_pattern": "M-M*"}, "recurrent state"),
    ({"architectures": ["SomeHybrid"], "layer_types": ["linear_attention", "full_attention"]}, "recurrent state"),
], ids=["qwen3", "sliding-window", "mrope", "qwen3-next", "nemotron-h", "linear-attention"])
def test_model_kinds_fork_join_cannot_serve_are_refused(tmp_path, config, refused):
    import json

    (tmp_path / "config.json").write_text(json.dumps(config))
    args = SimpleNamespace(**{**RESOLVED, "model_path": str(tmp_path)})
    problems = refusals(args)
    if refused is None:
        assert problems == []
    else:
        (message,) = problems
        assert message.startswith("NPR Engine cannot run with this model (") and refused in message
        assert config["architectures"][0] in message
