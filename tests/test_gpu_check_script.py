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
    assert gpu_e2e.problems(ok, requests) == []
    eager_only = [ok[0], _run("npr_triton:graphs", {"graph_replays": 0, "layer_calls": 40})]
    assert any("replayed a CUDA graph" in p for p in gpu_e2e.problems(eager_only, requests))
    unrouted = [ok[0], _run("npr_triton:graphs", {"graph_replays": 9, "graph_steps": 0})]
    assert any("shared_prefix_decode" in p for p in gpu_e2e.problems(unrouted, requests))
    floor = [_run("triton:graphs", {"graph_replays": 5}), _run("triton:graphs,splits=16", {"graph_replays": 5})]
    assert gpu_e2e.problems(floor, requests) == []


def test_each_checked_backend_is_compared_with_the_reference(monkeypatch, tmp_path, capsys):
    """One reference run, then every other backend compared with it (the noise floor and
    the checked backend from one model and one set of requests)."""
    import json

    def build_model(out, tokenizer_dir, shape):
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"vocab_size": 500}))
        return out

    def launch(cfg, work, timeout_s):
        requests = json.loads(Path(cfg["requests"]).read_text())
        outputs = []
        for r in requests:
            ids = [7] * 10
            if cfg["backend"] == "triton:graphs,splits=16" and r["width"] == 8:
                ids = ids[:4] + [8] * 6  # the noise floor parts at token 4 on W=8 requests
            block = {"width": r["width"], "fallback": None, "depth": 1, "fork_offset": 2, "paths": [4] * r["width"]}
            outputs.append({"ids": ids, "logprobs": [-0.1] * 10, "top2": [[(-0.1, 7), (-0.2, 8)]] * 10,
                            "blocks": [block]})
        routed = {"graph_replays": 3, "graph_steps": 2} if "graphs" in cfg["backend"] else {"layer_calls": 5}
        return {"routed": routed, "outputs": outputs, "start_s": 1.0, "generate_s": 1.0, "stop_s": 0.1}

    monkeypatch.setattr(gpu_e2e, "build_model", build_model)
    monkeypatch.setattr(gpu_e2e, "launch", launch)
    rc = gpu_e2e.main([str(tmp_path / "out"), "--dtypes", "bfloat16", "--backends", "triton:graphs",
                       "triton:graphs,splits=16", "npr_triton:graphs"])
    assert rc == 0
    report = json.loads((tmp_path / "out/gpu_e2e.json").read_text())["dtypes"]["bfloat16"]
    assert [r["backend"] for r in report["runs"]] == ["triton:graphs", "triton:graphs,splits=16", "npr_triton:graphs"]
    floor, checked = report["comparisons"]["triton:graphs,splits=16"], report["comparisons"]["npr_triton:graphs"]
    assert checked["verdict"] == "MATCH: all 12 requests token-identical"
    assert floor["verdict"].startswith("DIVERGED: 8/12") and "first divergences [4, 4, 4, 4]" in floor["verdict"]
    out = capsys.readouterr().out
    assert "bfloat16 npr_triton:graphs vs triton:graphs: MATCH" in out
    with pytest.raises(SystemExit, match="at least one backend"):
        gpu_e2e.main([str(tmp_path / "out"), "--backends", "triton"])
