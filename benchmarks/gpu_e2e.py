"""End-to-end check: `--attention-backend npr_triton` gives the tokens of SGLang's `triton`.

One random Qwen3 with GPU-sized attention (32 q / 8 kv heads, head_dim 128) serves the
same greedy requests under both backends, float32 then bfloat16. Every request is
forced into one parallel block (W = 2, 4, 8 paths over a 0.5k-1.5k token prompt; the
engine writes only the tags, the model writes every path), so sibling branches decode
together over a long shared prefix and npr_triton sends those steps to
npr_engine.kernels.shared_prefix_decode. The scheduler counts them (`npr_attn_routed`
in its internal state); a run that routed none is not a comparison.

Each engine runs in its own subprocess (`--worker`): Engine.shutdown() kills every
child of its process, and SGLang keeps server arguments process-global. Exit status:
0 compared (divergence is reported, not an error), 1 a run crashed or timed out,
2 no valid comparison (nothing routed, or a block fell back to plain text).

    python3 benchmarks/gpu_e2e.py OUTDIR --tokenizer .gpu/tokenizer      # see gpu_e2e.sh
    python3 benchmarks/gpu_e2e.py OUTDIR --device cpu --small --backends torch_native torch_native
    TRITON_INTERPRET=1 python3 benchmarks/gpu_e2e.py OUTDIR --device cpu --small --dtypes float32
        # ~10 min; SGLang's Triton kernels in Triton 3.6's interpreter need numpy < 2.4 and
        # compute bf16 dots wrongly (its uint16 bug), so only float32 means anything there
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_TOKENIZER = Path.home() / ".cache/npr_engine/models/SmolLM2-135M-Instruct"
WIDTHS = (2, 4, 8)
PROMPTS_PER_WIDTH = 4
CUDA_GRAPH_MAX_BS = 80  # >= every batch of the check: roots (12) plus their branches (56)
TIE_EPS = {"float32": 1e-3, "bfloat16": 0.25}  # a top-2 logprob margin below this is a near-tie
# NOTE: Triton's tl.dot multiplies float32 as tf32 unless told otherwise (SGLang's Triton
# kernels do not say), while shared_prefix_decode uses ieee for float32: ~1e-3 apart,
# enough to flip greedy tokens. Float32 runs of both backends therefore use ieee.
RUN_ENV = {"float32": {"TRITON_F32_DEFAULT": "ieee"}, "bfloat16": {}}


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    prompt_lens: tuple[int, int]  # shortest, longest prompt
    path_tokens: int  # max_path_tokens (header + text + close)
    summary_tokens: int
    kv_tokens: int


GPU_SHAPE = Shape(1024, 4, 32, 8, 128, 2048, (500, 1500), 48, 24, 65536)
SMALL_SHAPE = Shape(64, 2, 4, 2, 16, 128, (24, 80), 16, 8, 8192)


def build_model(out: Path, tokenizer_dir: Path, shape: Shape) -> Path:
    """A random Qwen3 saved with the tokenizer. Linear weights N(0, 1/fan_in) keep every
    activation O(1); q/k norm gain 2 makes attention peaky, lm_head N(0, 0.25) makes the
    logits peaky (std ~8 at hidden 1024), so greedy argmax is rarely a near-tie and the
    tokens follow what attention reads."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.q_heads,
        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(2.0)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name == "lm_head.weight":
                p.normal_(0, 0.25)
            elif name == "model.embed_tokens.weight":
                p.normal_(0, 1.0)
            else:
                p.normal_(0, p.shape[1] ** -0.5)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_requests(vocab: int, shape: Shape) -> list[dict]:
    """PROMPTS_PER_WIDTH requests per width, each with its own random prompt (no two share
    a radix-cache prefix, so both runs prefill exactly the same tokens)."""
    rng = random.Random(0)
    short, long = shape.prompt_lens
    count = len(WIDTHS) * PROMPTS_PER_WIDTH
    requests = []
    for i in range(count):
        width = WIDTHS[i // PROMPTS_PER_WIDTH]
        length = short + (long - short) * i // (count - 1)
        npr = {"force": True, "paths": width, "max_path_tokens": shape.path_tokens}
        params = {"max_new_tokens": width * shape.path_tokens + shape.summary_tokens + 16,
                  "temperature": 0, "ignore_eos": True, "custom_params": {"npr": npr}}
        requests.append({"width": width, "input_ids": [rng.randrange(100, vocab) for _ in range(length)],
                         "sampling_params": params})
    return requests


def parse_backend(spec: str) -> tuple[str, dict]:
    """`NAME[:OPTION[,OPTION]]`; options: `splits=N` (SGLang's triton_attention_num_kv_splits:
    two runs of `triton` with other split counts measure the bf16 noise floor) and
    `graphs` (CUDA graphs on; every run is eager otherwise)."""
    name, _, options = spec.partition(":")
    args = {"disable_cuda_graph": True}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "graphs" and not value:
            args["disable_cuda_graph"] = False
        elif key == "splits" and value.isdigit():
            args["triton_attention_num_kv_splits"] = int(value)
        else:
            raise ValueError(f"backend option {option!r}: only splits=N and graphs are known")
    return name, args


def worker(config_path: Path) -> None:
    """One engine: start, generate every request at once, read the routed counts, stop."""
    cfg = json.loads(config_path.read_text())
    if cfg["device"] == "cpu":
        os.environ["SGLANG_USE_CPU_ENGINE"] = "1"  # NOTE: before SGLang is imported
    import sglang

    requests = json.loads(Path(cfg["requests"]).read_text())
    extra = {"device": "cpu"} if cfg["device"] == "cpu" else {"mem_fraction_static": 0.3}
    t0 = time.perf_counter()
    backend, backend_args = parse_backend(cfg["backend"])
    if not backend_args["disable_cuda_graph"]:
        # Every batch this check runs (at most 12 roots and their 56 branches) replays a
        # graph; fewer sizes to capture than SGLang's default list.
        backend_args["cuda_graph_max_bs_decode"] = CUDA_GRAPH_MAX_BS
    llm = sglang.Engine(
        model_path=cfg["model"], dtype=cfg["dtype"], attention_backend=backend,
        sampling_backend="pytorch", max_total_tokens=cfg["kv_tokens"],
        max_running_requests=128, random_seed=0, log_level="error", **extra, **backend_args,
    )
    t1 = time.perf_counter()
    outs = llm.generate(input_ids=[r["input_ids"] for r in requests],
                        sampling_params=[r["sampling_params"] for r in requests],
                        return_logprob=True, top_logprobs_num=2)
    t2 = time.perf_counter()
    routed = llm.get_server_info()["internal_states"][0].get("npr_attn_routed")
    llm.shutdown()
    result = {"routed": routed, "outputs": [_collect(o) for o in outs],
              "start_s": t1 - t0, "generate_s": t2 - t1, "stop_s": time.perf_counter() - t2}
    Path(cfg["result"]).write_text(json.dumps(result))


def _collect(out: dict) -> dict:
    meta = out["meta_info"]
    blocks = [{k: b[k] for k in ("depth", "fork_offset", "width", "fallback")}
              | {"paths": [p["tokens"] for p in b["paths"]]} for b in meta["npr_trace"]["blocks"]]
    return {"ids": out["output_ids"], "logprobs": [lp for lp, *_ in meta["output_token_logprobs"]],
            # NOTE: None where the engine injected the token (forced tags have no top-k).
            "top2": [[(lp, tok) for lp, tok, *_ in top or []] for top in meta["output_top_logprobs"]],
            "blocks": blocks}


def launch(cfg: dict, work: Path, timeout_s: float) -> dict:
    """Runs `worker` in a subprocess of its own session (a timeout kills SGLang's children too)."""
    name = f"{cfg['dtype']}-{cfg['backend']}-{cfg['run']}"
    config_path, result_path = work / f"{name}.config.json", work / f"{name}.result.json"
    config_path.write_text(json.dumps({**cfg, "result": str(result_path)}))
    t0 = time.perf_counter()
    # PYTHONWARNINGS: SGLang's import-time warnings, repeated in each of its processes.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **RUN_ENV[cfg["dtype"]]}
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(config_path)], env=env,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    wall = time.perf_counter() - t0
    if rc != 0 or not result_path.exists():
        return {"error": f"worker exit {rc}", "wall_s": wall}
    return json.loads(result_path.read_text()) | {"wall_s": wall}


def compare(ref: dict, new: dict, eps: float) -> dict:
    """One request's outputs under two backends: where and how (logprob margins) they part."""
    a, b = ref["ids"], new["ids"]
    div = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if div is None and len(a) != len(b):
        div = min(len(a), len(b))
    agree = len(a) if div is None else div
    diffs = [abs(x - y) for x, y in zip(ref["logprobs"][:agree], new["logprobs"][:agree], strict=True)
             if x is not None and y is not None]
    row = {"tokens": [len(a), len(b)], "equal": div is None, "first_divergence": div,
           "frac_equal": sum(x == y for x, y in zip(a, b, strict=False)) / max(len(a), len(b), 1),
           "max_logprob_diff_while_equal": max(diffs, default=0.0)}
    if div is not None and div < min(len(a), len(b)):
        ta, tb = a[div], b[div]
        margin_ref, margin_new = _margin(ref["top2"][div], ta, tb), _margin(new["top2"][div], tb, ta)
        row |= {"where": locate(div, ref["blocks"]), "tokens_at_divergence": [ta, tb],
                "margin_ref": margin_ref, "margin_new": margin_new,
                "near_tie": None not in (margin_ref, margin_new) and max(margin_ref, margin_new) < eps,
                "ids_ref": a, "ids_new": b}
    return row


def _margin(top2: list, chosen: int, other: int) -> float | None:
    """logprob(chosen) - logprob(other) in one run's top-2 (None: other not in its top-2)."""
    lps = {tok: lp for lp, tok in top2}
    return lps[chosen] - lps[other] if chosen in lps and other in lps else None


def locate(index: int, blocks: list[dict]) -> str:
    """Where output token `index` lies in the flattened text of a one-block reply:

        forced open | path 1 (header, text, close) | path 2 | ... | summary
    """
    block = next((b for b in blocks if b["depth"] == 1), None)
    if block is None:
        return "no block"
    pos = block["fork_offset"]
    if index < pos:
        return "block open"
    for path, tokens in enumerate(block["paths"], 1):
        if index < pos + tokens:
            return f"path {path} token {index - pos}"
        pos += tokens
    return f"summary token {index - pos}"


def problems(runs: list[dict], requests: list[dict]) -> list[str]:
    """Why two runs (reference, checked) are not a valid comparison (empty: they are)."""
    found = [f"run {i} ({r['backend']}): {r['error']}" for i, r in enumerate(runs) if "error" in r]
    if found:
        return found
    for i, run in enumerate(runs):
        for req, out in zip(requests, run["outputs"], strict=True):
            shapes = [(b["width"], b["fallback"]) for b in out["blocks"] if b["depth"] == 1]
            if shapes != [(req["width"], None)]:
                found.append(f"run {i}: a W={req['width']} request forked as {shapes}")
    for run in runs:
        name, options = parse_backend(run["backend"])
        routed = run["routed"] or {}
        if not options["disable_cuda_graph"] and not routed.get("graph_replays"):
            found.append(f"{run['backend']}: no decode step replayed a CUDA graph ({routed})")
        if name == "npr_triton" and run is runs[1]:
            key = "layer_calls" if options["disable_cuda_graph"] else "graph_steps"
            if not routed.get(key):
                found.append(f"{run['backend']} sent no decode step to shared_prefix_decode ({routed})")
    return found


def evaluate(dtype: str, runs: list[dict], requests: list[dict]) -> dict:
    """The checked run (runs[1]) against the reference (runs[0]), request by request."""
    entry = {"problems": problems(runs, requests)}
    if any("error" in r for r in runs):
        return entry
    rows = [compare(a, b, TIE_EPS[dtype]) | {"width": req["width"], "prompt": len(req["input_ids"])}
            for req, a, b in zip(requests, runs[0]["outputs"], runs[1]["outputs"], strict=True)]
    entry["requests"] = rows
    equal = sum(r["equal"] for r in rows)
    ties = sum(bool(r.get("near_tie")) for r in rows)
    divergences = sorted(r["first_divergence"] for r in rows if not r["equal"])
    verdict = f"MATCH: all {equal} requests token-identical"
    if equal < len(rows):
        verdict = (f"DIVERGED: {equal}/{len(rows)} requests token-identical, {ties} of the others part at a "
                   f"near-tie; first divergences {divergences}")
    invalid = "INVALID (" + "; ".join(entry["problems"]) + "), " if entry["problems"] else ""
    entry["verdict"] = invalid + verdict
    return entry


def table(report: dict) -> str:
    lines = [f"{'dtype':9} {'checked':24} {'W':>2} {'prompt':>6} {'tokens':>9} {'equal':>5} {'div':>4} "
             f"{'where':18} {'margin ref/new':>17} {'max|dlp|':>9}"]
    for dtype, entry in report["dtypes"].items():
        for checked, comparison in entry["comparisons"].items():
            for r in comparison.get("requests", []):
                margins = "-" if r["equal"] else f"{_fmt(r.get('margin_ref'))}/{_fmt(r.get('margin_new'))}"
                lines.append(f"{dtype:9} {checked:24} {r['width']:>2} {r['prompt']:>6} "
                             f"{'/'.join(map(str, r['tokens'])):>9} {'yes' if r['equal'] else 'NO':>5} "
                             f"{_fmt(r['first_divergence']):>4} {r.get('where', '-'):18} {margins:>17} "
                             f"{r['max_logprob_diff_while_equal']:9.2e}")
    for dtype, entry in report["dtypes"].items():
        for i, run in enumerate(entry["runs"]):
            times = " ".join(f"{k} {run[k]:.1f}s" for k in ("start_s", "generate_s", "stop_s", "wall_s") if k in run)
            lines.append(f"{dtype} run {i} {run['backend']}: routed {run.get('routed')} {times} {run.get('error', '')}")
        for checked, comparison in entry["comparisons"].items():
            verdict = comparison.get("verdict", "NOT COMPARED: " + "; ".join(comparison["problems"]))
            lines.append(f"{dtype} {checked} vs {entry['runs'][0]['backend']}: {verdict}")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", nargs="?", type=Path)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--backends", nargs="+", default=["triton", "npr_triton"],
                   help="the reference, then each checked against it: NAME[:splits=N][,graphs] (triton "
                        "triton:splits=16: noise floor; npr_triton npr_triton:graphs: CUDA graphs on vs off)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(TIE_EPS))
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    p.add_argument("--small", action="store_true", help="a tiny model and short requests (CPU runs)")
    p.add_argument("--budget-s", type=float, default=170.0, help="wall-clock budget for everything")
    p.add_argument("--min-run-s", type=float, default=20.0, help="skip a run with less budget left")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if len(args.backends) < 2:
        raise SystemExit("--backends: a reference and at least one backend to check against it")
    deadline = time.monotonic() + args.budget_s
    args.outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="npr_e2e."))
    try:
        report = run_all(args, work, deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(report))
    entries = report["dtypes"].values()
    if any("error" in r for e in entries for r in e["runs"]):
        return 1
    return 2 if any(c["problems"] for e in entries for c in e["comparisons"].values()) else 0


def run_all(args: argparse.Namespace, work: Path, deadline: float) -> dict:
    """Builds the model, runs every (dtype, backend), writes gpu_e2e.json after each dtype."""
    shape = SMALL_SHAPE if args.small else GPU_SHAPE
    t0 = time.perf_counter()
    model = build_model(work / "model", args.tokenizer, shape)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    requests = make_requests(vocab, shape)
    (work / "requests.json").write_text(json.dumps(requests))
    report = {"device": args.device, "backends": args.backends, "shape": asdict(shape),
              "build_model_s": time.perf_counter() - t0, "dtypes": {}}
    print(f"model built in {report['build_model_s']:.1f}s: {shape}; {len(requests)} requests", flush=True)
    for dtype in args.dtypes:
        runs = []
        for i, backend in enumerate(args.backends):
            left = deadline - time.monotonic()
            cfg = {"run": i, "backend": backend, "dtype": dtype, "device": args.device, "model": str(model),
                   "requests": str(work / "requests.json"), "kv_tokens": shape.kv_tokens}
            run = launch(cfg, work, left) if left >= args.min_run_s else {"error": "skipped: time budget spent"}
            runs.append(run | {"backend": backend})
            print(f"{dtype} {backend}: {'error: ' + run['error'] if 'error' in run else 'done'}", flush=True)
        report["dtypes"][dtype] = {
            "env": RUN_ENV[dtype], "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in runs],
            "comparisons": {r["backend"]: evaluate(dtype, [runs[0], r], requests) for r in runs[1:]}}
        (args.outdir / "gpu_e2e.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    sys.exit(main())
