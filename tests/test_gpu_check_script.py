"""The GPU end-to-end check's own logic (benchmarks/gpu_e2e.py), on CPU: backend specs
and what makes a run no valid comparison (no GPU needed for these)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("gpu_e2e", Path(__file__).parent.parent / "benchmarks/gpu_e2e.py")
gpu_e2e = importlib.util.module_from_spec(_spec)
sys.modules["gpu_e2e"] = gpu_e2e  # dataclasses look their module up while building
_spec.loader.exec_module(gpu_e2e)


def test_backend_specs():
    assert gpu_e2e.parse_backend("triton") == ("triton", {"disable_cuda_graph": True})
    assert gpu_e2e.parse_backend("npr_triton:graphs") == ("npr_triton", {"disable_cuda_graph": False})
    assert gpu_e2e.parse_backend("triton:graphs,splits=16") == (
        "triton", {"disable_cuda_graph": False, "triton_attention_num_kv_splits": 16})
    with pytest.raises(ValueError, match="only splits=N and graphs"):
        gpu_e2e.parse_backend("triton:fast")


def _run(backend: str, routed: dict) -> dict:
    block = {"width": 2, "fallback": None, "depth": 1}
    return {"backend": backend, "routed": routed, "outputs": [{"blocks": [block]}]}


def test_a_graph_run_that_replayed_nothing_is_no_comparison():
    requests = [{"width": 2}]
    ok = [_run("npr_triton", {"layer_calls": 3}), _run("npr_triton:graphs", {"graph_replays": 9, "graph_steps": 4})]
    assert gpu_e2e.problems(ok, requests, "npr_triton:graphs") == []
    eager_only = [ok[0], _run("npr_triton:graphs", {"graph_replays": 0, "layer_calls": 40})]
    assert any("replayed a CUDA graph" in p for p in gpu_e2e.problems(eager_only, requests, "npr_triton:graphs"))
    unrouted = [ok[0], _run("npr_triton:graphs", {"graph_replays": 9, "graph_steps": 0})]
    assert any("shared_prefix_decode" in p for p in gpu_e2e.problems(unrouted, requests, "npr_triton:graphs"))
    floor = [_run("triton:graphs", {"graph_replays": 5}), _run("triton:graphs,splits=16", {"graph_replays": 5})]
    assert gpu_e2e.problems(floor, requests, "triton:graphs,splits=16") == []
