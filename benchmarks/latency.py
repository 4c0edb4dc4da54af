"""Wall-clock speed-up of forked decoding (benchmark, not a test).

Workload: a forced block of W paths x L tokens, then S summary tokens (EOS ignored).
Measured side by side in one run, on one engine:
  fork     the NPR request (force=True, paths=W, max_path_tokens=L)
  (a) seq  the same engine decoding W*L+S tokens as one plain request (enabled=False)
  (b) ind  W independent plain requests of L tokens decoded together, then one of S
           tokens: the most a fork can hope to match on this hardware.
Prints speed-up (a/fork), its fraction of the ideal (W*L+S)/(L+S), and fork's
fraction of (b) (b/fork), as a table, JSON and a PNG plot over W.

  python benchmarks/latency.py --out bench_out [--dtype bfloat16] [--widths 1 2 4 8] [--inject step]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from plotting import plot_over_width  # benchmarks/ is the script's folder

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

PROMPT = "Think about why the sky is blue, then answer."


def timed(runs: dict, repeats: int) -> dict[str, float]:
    """Median wall-clock seconds per run; the runs are interleaved within each repeat, so
    slow drifts of a noisy machine hit every column alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(llm, width: int, length: int, summary: int, repeats: int) -> dict:
    opts = {"force": True, "paths": width, "max_path_tokens": length}
    fork_params = {"max_new_tokens": 0, "temperature": 0, "ignore_eos": True, "custom_params": {"npr": opts}}
    # A probe sized to finish the block and a few summary tokens tells where the summary starts.
    probe = llm.generate(PROMPT, {**fork_params, "max_new_tokens": width * (length + 4) + 32})
    trace = probe["meta_info"]["npr_trace"]
    # Budget = everything up to the join header + S summary tokens.
    before_summary = trace["total_tokens"] - _summary_tokens(probe, trace)
    fork_params["max_new_tokens"] = before_summary + summary
    plain = {"temperature": 0, "ignore_eos": True, "custom_params": {"npr": {"enabled": False}}}
    runs = {
        "fork": lambda: llm.generate(PROMPT, fork_params),
        "seq": lambda: llm.generate(PROMPT, {**plain, "max_new_tokens": width * length + summary}),
        "ind": lambda: (llm.generate([PROMPT] * width, {**plain, "max_new_tokens": length}),
                        llm.generate(PROMPT, {**plain, "max_new_tokens": summary})),
    }
    steps = {}
    for name, run in runs.items():
        start = _forward_ct(llm)
        run()  # warm-up: prefix cache and allocator in their steady state
        steps[name] = _forward_ct(llm) - start
    times = timed(runs, repeats)
    final = llm.generate(PROMPT, fork_params)["meta_info"]["npr_trace"]
    ideal = (width * length + summary) / (length + summary)
    speedup = times["seq"] / times["fork"]
    return {
        "W": width, "L": length, "S": summary, "seconds": times, "steps": steps,
        "speedup": speedup, "ideal": ideal, "of_ideal": speedup / ideal,
        "of_independent": times["ind"] / times["fork"],
        "path_tokens": [p["tokens"] for p in final["blocks"][0]["paths"]],
        "critical_path_tokens": final["critical_path_tokens"], "total_tokens": final["total_tokens"],
        "parallel_rate": final["parallel_rate"],
    }


def _forward_ct(llm) -> int:
    return llm.get_server_info()["internal_states"][0]["npr_kv"]["forward_ct"]


def _summary_tokens(out: dict, trace: dict) -> int:
    """Tokens after the join header in a probe run that ran to its natural end."""
    block = trace["blocks"][0]
    return trace["total_tokens"] - block["fork_offset"] - sum(p["tokens"] for p in block["paths"]) - block[
        "join_tokens"]


def table(rows: list[dict]) -> str:
    lines = ["  W    L   S |  fork s   seq s   ind s | speed-up  ideal  of ideal  of (b) | paths  rate"
             " | steps fork/seq/ind"]
    for r in rows:
        t, n = r["seconds"], r["steps"]
        lines.append(
            f"{r['W']:3d} {r['L']:4d} {r['S']:3d} | {t['fork']:7.2f} {t['seq']:7.2f} {t['ind']:7.2f} | "
            f"{r['speedup']:8.2f} {r['ideal']:6.2f} {r['of_ideal']:9.2f} {r['of_independent']:7.2f} | "
            f"{min(r['path_tokens'])}-{max(r['path_tokens'])} {r['parallel_rate']} | "
            f"{n['fork']}/{n['seq']}/{n['ind']}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    plot_over_width(path, [r["W"] for r in rows], [
        ("ideal (W·L+S)/(L+S)", "k--", [r["ideal"] for r in rows]),
        ("fork vs sequential (a)", "o-", [r["speedup"] for r in rows]),
        ("independent (b) vs sequential (a)", "s-", [r["seconds"]["seq"] / r["seconds"]["ind"] for r in rows]),
    ], ylabel="wall-clock speed-up", title=f"L={rows[0]['L']}, S={rows[0]['S']}", log2_x=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the embedded default model)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--L", type=int, default=64)
    ap.add_argument("--S", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inject", choices=["extend", "step"], default="extend",
                    help="multi-token injected text: one extend step (default) or one token per step")
    args = ap.parse_args()
    os.environ["NPR_INJECT"] = args.inject  # read by the scheduler process

    import sglang

    from npr_engine.default_model import default_model_dir

    model = args.model or str(default_model_dir())
    backend = {"device": "cpu", "attention_backend": "torch_native"} if args.device == "cpu" else {}
    llm = sglang.Engine(model_path=model, dtype=args.dtype, disable_cuda_graph=True, log_level="error",
                        max_total_tokens=16384, **backend)
    try:
        rows = [measure(llm, w, args.L, args.S, args.repeats) for w in args.widths]
    finally:
        llm.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(
        json.dumps({"dtype": args.dtype, "model": model, "inject": args.inject, "rows": rows}, indent=1))
    plot(rows, out / "latency.png")
    print(f"model {Path(model).name}, dtype {args.dtype}, device {args.device}, inject {args.inject}")
    print(table(rows))


if __name__ == "__main__":
    main()
