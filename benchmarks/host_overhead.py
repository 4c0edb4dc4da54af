"""Host cost of the plugin on the scheduler thread, beside SGLang's own (benchmark).

One offline Engine (tiny random Qwen3 whose tokenizer carries NPR's and Multiverse's
tags as special tokens, CPU) runs with NPR_HOST_PROFILE=1 (npr_engine/host_clock.py): every hook the
plugin installs is timed, and SGLang's scheduler-thread time per busy step is measured
in the same run (the model's forward and sampling excluded). Per batch size B it runs
  outside   B plain requests with blocks enabled (the default) that open none
  inside   B requests each in a forced 2-path block for most of their tokens, in the
           default `parallel` schema (text tags here: `</path>` is three tokens)
  inside-npr  the same in NPR's schema, whose tags are special tokens (as NPR-4B's)
and prints, per busy step and per request-step, our time, SGLang's own, and their ratio
(over all busy steps; and over decode steps alone, the steady state between forks and
joins). Plugin time outside busy steps is printed apart. Part of our time is stock
code our hooks call (building the extend batches of injected text, parking, branch
requests: host_clock.STOCK_CALLED); it is printed apart too, with the ratio of our own
code alone to all of SGLang's, for information only: the targets hold the whole of our
hooks' time against SGLang's own. Python's garbage collections on the scheduler thread
are on neither side (a full one, ~0.6 s here, lands in whatever code allocates at the
time): printed apart, per step.
Targets (issue 12): ratio <= 5% outside blocks and <= 25% inside (both kinds), at B = 256.

  python benchmarks/host_overhead.py --out bench_out [--batches 1 64 256] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
os.environ["NPR_HOST_PROFILE"] = "1"  # read by the scheduler process at plugin load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = os.environ.get("HO_KINDS", "outside inside inside-npr").split()
TARGETS = {"outside": 0.05, "inside": 0.25, "inside-npr": 0.25}
# The schema of each kind's blocks: `parallel` (the default) has text tags in this
# tokenizer (<path> is several tokens); NPR's tags are special tokens, as in NPR-4B's.
SCHEMAS = {"inside": "parallel", "inside-npr": "npr"}


def _clock(llm) -> dict:
    return llm.get_server_info()["internal_states"][0]["npr_host_time"]


def _diff(after: dict, before: dict) -> dict:
    kinds = {name: {key: v - before["kinds"][name][key] for key, v in k.items()} for name, k in after["kinds"].items()}
    by_hook = {k: v - before["by_hook"].get(k, 0.0) for k, v in after["by_hook"].items()}
    return {"kinds": kinds, "by_hook": by_hook,
            "plugin_outside_steps": after["plugin_outside_steps"] - before["plugin_outside_steps"]}


def _cost(k: dict) -> dict:
    """Per step and per request-step: ours, SGLang's own (step - forward - ours - garbage
    collections), ratio."""
    sglang = k["step"] - k["forward"] - k["plugin"] - k["gc"]
    steps, rsteps = max(k["steps"], 1), max(k["request_steps"], 1)
    return {"steps": k["steps"], "rows_per_step": k["request_steps"] / steps,
            "plugin_ms_per_step": 1e3 * k["plugin"] / steps, "sglang_ms_per_step": 1e3 * sglang / steps,
            "stock_in_plugin_ms_per_step": 1e3 * k["stock"] / steps,
            "own_code_ratio": (k["plugin"] - k["stock"]) / (sglang + k["stock"]) if sglang > 0 else float("inf"),
            "forward_ms_per_step": 1e3 * k["forward"] / steps,
            "gc_ms_per_step": 1e3 * k["gc"] / steps,
            "plugin_us_per_request_step": 1e6 * k["plugin"] / rsteps,
            "sglang_us_per_request_step": 1e6 * sglang / rsteps,
            "ratio": k["plugin"] / sglang if sglang > 0 else float("inf")}


def workload(kind: str, batch: int, tokens: int) -> tuple[list[str], dict]:
    prompts = [f"Request {i}: think about case {i % 7} and answer." for i in range(batch)]
    params = {"temperature": 0, "ignore_eos": True}
    if kind == "outside":
        params["max_new_tokens"] = tokens
    else:
        # A short forced open, two paths of `tokens` each, then a few summary tokens.
        params["max_new_tokens"] = 2 * tokens + 24
        params["custom_params"] = {"npr": {"force": True, "paths": 2, "max_path_tokens": tokens,
                                           "schema": SCHEMAS[kind]}}
    return prompts, params


def measure(llm, kind: str, batch: int, tokens: int) -> dict:
    prompts, params = workload(kind, batch, tokens)
    before = _clock(llm)
    outs = llm.generate(prompts, params)
    d = _diff(_clock(llm), before)
    blocks = sum(len((o["meta_info"].get("npr_trace") or {}).get("blocks", [])) for o in outs)
    both = {key: d["kinds"]["decode"][key] + d["kinds"]["extend"][key] for key in d["kinds"]["decode"]}
    steps = max(both["steps"], 1)
    return {"kind": kind, "batch": batch, "blocks": blocks, **_cost(both),
            "decode_only": _cost(d["kinds"]["decode"]),
            "plugin_ms_outside_steps": 1e3 * d["plugin_outside_steps"],
            "hook_ms_per_step": {k: round(1e3 * v / steps, 4)
                                 for k, v in sorted(d["by_hook"].items(), key=lambda kv: -kv[1]) if v > 0}}


def _short(key: str) -> str:
    step, hook = key.split(" ", 1)
    kind, target = hook.split(":", 1)
    return f"[{step}] {kind} {target.rsplit('.', 1)[-1]}"


def table(rows: list[dict]) -> str:
    lines = ["kind        B | steps rows/step blocks | ours ms/step  sglang ms/step  forward ms/step | "
             "ours us/req  sglang us/req | ratio  target               | decode steps only | "
             "stock in ours ms/step, own code ratio | gc ms/step"]
    for r in rows:
        target = TARGETS[r["kind"]] if r["batch"] == 256 else None
        mark = "" if target is None else (f" <= {target:.0%} " + ("met" if r["ratio"] <= target else "MISSED"))
        lines.append(
            f"{r['kind']:10s} {r['batch']:3d} | {r['steps']:5d} {r['rows_per_step']:9.1f} {r['blocks']:6d} | "
            f"{r['plugin_ms_per_step']:12.3f} {r['sglang_ms_per_step']:15.3f} {r['forward_ms_per_step']:16.3f} | "
            f"{r['plugin_us_per_request_step']:11.2f} {r['sglang_us_per_request_step']:14.2f} | "
            f"{r['ratio']:6.1%}{mark:21s}| {r['decode_only']['ratio']:17.1%} | "
            f"{r['stock_in_plugin_ms_per_step']:.3f}, {r['own_code_ratio']:.1%} | {r['gc_ms_per_step']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--tokens", type=int, default=48, help="tokens per request (outside) or per path (inside)")
    args = ap.parse_args()

    import sglang

    from npr_engine.default_model import default_model_dir
    from tests.support.tiny_models import tiny_qwen3

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_qwen3(Path(tmp) / "tiny", default_model_dir(), seed=3, special_tags=True)
        llm = sglang.Engine(model_path=str(model), device="cpu", attention_backend="torch_native",
                            disable_cuda_graph=True, dtype="float32", log_level="error", random_seed=0,
                            max_total_tokens=65536, max_running_requests=1024, sleep_on_idle=True)
        try:
            for kind in ("outside", "inside", "inside-npr"):  # warm-up: allocator, caches, first-call costs
                measure(llm, kind, 8, 8)
            rows = [measure(llm, kind, b, args.tokens) for b in args.batches for kind in KINDS]
        finally:
            llm.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_overhead.json").write_text(json.dumps({"tokens": args.tokens, "rows": rows}, indent=1))
    print(f"tiny Qwen3 (NPR's and Multiverse's tags as special tokens), CPU, {args.tokens} tokens per request / path")
    print(table(rows))
    print("plugin time outside busy steps (not in the ratios; get_server_info calls, idle checks): "
          + ", ".join(f"{r['kind']} B={r['batch']} {r['plugin_ms_outside_steps']:.1f} ms" for r in rows))
    print("where our time goes at the largest batch (ms per step, by hook):")
    for r in rows[-len(KINDS):]:
        top = list(r["hook_ms_per_step"].items())[:8]
        print(f"  {r['kind']:8s} " + ", ".join(f"{_short(k)} {v:.3f}" for k, v in top))


if __name__ == "__main__":
    main()
