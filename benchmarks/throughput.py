"""Throughput in NPR's metric: flattened reply tokens per second of wall clock (benchmark).

N prompts at once, each a forced block of W paths (L tokens each) then S summary
tokens, every request returning log-probs, on the offline Engine. Columns, measured
side by side in one run (interleaved within each repeat, medians reported):
  fork   our engine, the blocks forked (what NPR Engine serves)
  seq    our engine, `parallel` off: each prompt decodes as many tokens as its fork
         reply has, one sequence per prompt
  stock  stock SGLang without the plugin (a second engine in a subprocess whose
         SGLANG_PLUGINS names none of ours), the same sequential token counts
Flattened tokens are the reply's completion tokens (a fork reply counts every path).
Prints tokens/s per column and the ratios fork/seq, fork/stock, seq/stock, as a
table, JSON and a PNG over W.

  python benchmarks/throughput.py --out bench_out [--n 64] [--widths 2 4] [--L 32] [--S 8]
                                  [--device cpu|cuda] [--dtype bfloat16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from plotting import plot_over_width  # benchmarks/ is the script's folder

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

PROMPT = "Question {i}: think it through, then answer: why is the sky blue?"


def engine_args(args) -> dict:
    from npr_engine.default_model import default_model_dir

    device = {"device": "cpu", "attention_backend": "torch_native"} if args.device == "cpu" else {}
    return dict(model_path=args.model or str(default_model_dir()), dtype=args.dtype, disable_cuda_graph=True,
                log_level="error", max_total_tokens=args.kv_tokens, random_seed=0, sleep_on_idle=True, **device)


def prompts(n: int) -> list[str]:
    return [PROMPT.format(i=i) for i in range(n)]


def sequential(budgets: list[int], parallel_off: bool) -> list[dict]:
    extra = {"custom_params": {"npr": {"enabled": False}}} if parallel_off else {}
    return [{"max_new_tokens": b, "temperature": 0, "ignore_eos": True, **extra} for b in budgets]


def timed_generate(llm, texts: list[str], params) -> tuple[float, int]:
    start = time.perf_counter()
    outs = llm.generate(texts, params, return_logprob=True)
    seconds = time.perf_counter() - start
    return seconds, sum(o["meta_info"]["completion_tokens"] for o in outs)


# -- the stock engine, in a subprocess: one JSON request per line on stdin -------------


def stock_worker(args) -> None:
    import sglang

    llm = sglang.Engine(**engine_args(args))
    if "npr_kv" in llm.get_server_info()["internal_states"][0]:
        raise SystemExit("the stock engine loaded the NPR Engine plugin")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        if ask.get("quit"):
            break
        seconds, tokens = timed_generate(llm, prompts(len(ask["budgets"])), sequential(ask["budgets"], False))
        print(json.dumps({"seconds": seconds, "tokens": tokens}), flush=True)
    llm.shutdown()


class StockEngine:
    def __init__(self, argv: list[str]):
        env = {**os.environ, "SGLANG_PLUGINS": "none-of-ours"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--stock-worker", *argv], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the stock engine exited")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, budgets: list[int]) -> tuple[float, int]:
        self.proc.stdin.write(json.dumps({"budgets": budgets}) + "\n")
        self.proc.stdin.flush()
        got = self._read()
        return got["seconds"], got["tokens"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=120)


# -- one width ---------------------------------------------------------------------------


def fork_params(llm, width: int, length: int, summary: int) -> dict:
    """Forced block, then `summary` tokens: a probe tells where its summary starts."""
    opts = {"force": True, "paths": width, "max_path_tokens": length}
    p = {"temperature": 0, "ignore_eos": True, "custom_params": {"npr": opts}}
    probe = llm.generate(PROMPT.format(i=0), {**p, "max_new_tokens": width * (length + 8) + 64})
    block = probe["meta_info"]["npr_trace"]["blocks"][0]
    before_summary = block["fork_offset"] + sum(x["tokens"] for x in block["paths"]) + block["join_tokens"]
    return {**p, "max_new_tokens": before_summary + summary}


def measure(llm, stock: StockEngine, args, width: int) -> dict:
    texts = prompts(args.n)
    fp = fork_params(llm, width, args.L, args.S)
    outs = llm.generate(texts, fp, return_logprob=True)  # warm-up, and the token counts
    budgets = [o["meta_info"]["completion_tokens"] for o in outs]
    forked = sum(1 for o in outs if o["meta_info"]["npr_trace"]["blocks"][0]["fallback"] is None)
    runs = {
        "fork": lambda: timed_generate(llm, texts, fp),
        "seq": lambda: timed_generate(llm, texts, sequential(budgets, True)),
        "stock": lambda: stock.run(budgets),
    }
    runs["seq"]()  # warm-up
    runs["stock"]()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            s, t = run()
            seconds[name].append(s)
            tokens[name] = t
    med = {k: statistics.median(v) for k, v in seconds.items()}
    rate = {k: tokens[k] / med[k] for k in runs}
    return {"W": width, "L": args.L, "S": args.S, "N": args.n, "forked": forked, "tokens": tokens,
            "seconds": med, "tokens_per_s": rate, "fork_vs_seq": rate["fork"] / rate["seq"],
            "fork_vs_stock": rate["fork"] / rate["stock"], "seq_vs_stock": rate["seq"] / rate["stock"]}


def table(rows: list[dict]) -> str:
    lines = ["  W    N   L  S | tokens fork/seq/stock | tok/s fork    seq  stock | fork/seq fork/stock seq/stock"]
    for r in rows:
        t, v = r["tokens"], r["tokens_per_s"]
        lines.append(
            f"{r['W']:3d} {r['N']:4d} {r['L']:3d} {r['S']:2d} | {t['fork']:6d} {t['seq']:6d} {t['stock']:6d} | "
            f"{v['fork']:10.1f} {v['seq']:6.1f} {v['stock']:6.1f} | {r['fork_vs_seq']:8.2f} "
            f"{r['fork_vs_stock']:10.2f} {r['seq_vs_stock']:9.2f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    plot_over_width(path, [r["W"] for r in rows],
                    [(name, fmt, [r["tokens_per_s"][name] for r in rows])
                     for name, fmt in (("fork", "o-"), ("seq", "s-"), ("stock", "^-"))],
                    ylabel="flattened tokens / s",
                    title=f"N={rows[0]['N']}, L={rows[0]['L']}, S={rows[0]['S']}, log-probs on")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the embedded default model)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--L", type=int, default=32)
    ap.add_argument("--S", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--kv-tokens", type=int, default=65536)
    ap.add_argument("--stock-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stock_worker:
        stock_worker(args)
        return
    passed = [a for a in sys.argv[1:] if a != "--stock-worker"]

    import sglang

    stock = StockEngine(passed)
    llm = sglang.Engine(**engine_args(args))
    try:
        rows = [measure(llm, stock, args, w) for w in args.widths]
    finally:
        llm.shutdown()
        stock.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps({"dtype": args.dtype, "device": args.device, "rows": rows},
                                                    indent=1))
    plot(rows, out / "throughput.png")
    print(f"dtype {args.dtype}, device {args.device}, log-probs on, {args.repeats} repeats (medians)")
    print(table(rows))


if __name__ == "__main__":
    main()
