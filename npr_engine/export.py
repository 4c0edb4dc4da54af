"""Trainer export: one dense forward over the flattened text that reproduces the engine.

For a finished request, `training_view(out, prompt_ids)` gives the flattened token ids
(prompt + output, as returned), a position id per token, the index ranges each token
may attend to, which output tokens the engine injected, and which row's logits score
each output token. Under that mask and those positions, a causal LM's dense forward
computes the logits the engine computed (DESIGN.md section 3, "Training consistency").

    | prompt | prefix .. t | path 1 | path 2 | .. | join header, continuation |
                         ^ fork token: every path's first token is scored by t's row

- prompt and text outside blocks: causal, positions 0, 1, 2, ...
- path k of a block: sees the prompt, the prefix up to and including t, and its own
  tokens (never a sibling); positions restart at pos(fork point) + 1 for every path
  (`shared`, the training rule of DESIGN.md section 2), where t is the fork point's
  last token or, for schemas with a ``fork_separator``, the separator's: those tokens
  share positions with each path's first tokens.
- a staged join (``staged`` in the trace: schemas with a one-token ``branch_tail``):
  each path's tail sees everything before it, and path k >= 2's first token is
  scored by the previous path's tail, as in training.
- after the join: sees everything before it; positions continue from the longest
  path up to its close tag (pos(close) + 1; a ``branch_tail`` after the close keeps
  its own positions but does not count). Nested blocks compose: a path is itself a
  sequence.

Pure Python (lists of ints); `bool_mask` / `additive_mask` build torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Ranges = tuple[tuple[int, int], ...]  # half-open [start, end) index ranges


@dataclass
class TrainingView:
    input_ids: list[int]  # prompt + output, flattened as returned
    position_ids: list[int]  # per token
    visible: list[Ranges]  # per token: the indices it attends to (itself included)
    prompt_len: int
    # Per output token (index j is token prompt_len + j):
    logit_index: list[int]  # the token whose logits score it (previous token, or the fork token)
    injected: list[bool]  # written by the engine: forced open, path headers, close tags, join headers
    logprobs: list[float | None] | None = None  # the engine's values (None: not scored)

    @property
    def output_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


@dataclass
class _Layout:
    positions: list[int]
    visible: list[Ranges]
    logit_index: list[int]
    injected: list[bool]
    children: dict[tuple[int | None, int | None], list[dict]] = field(default_factory=dict)


def training_view(out: dict, prompt_ids: list[int]) -> TrainingView:
    """The view of one finished engine output (`sglang.Engine.generate` dict)."""
    meta = out["meta_info"]
    logprobs = meta.get("output_token_logprobs")
    values = None
    if logprobs is not None:
        values = [None if _is_nan(v) else v for v, *_ in logprobs]
    trace = meta.get("npr_trace") or {"blocks": [], "injected": []}
    return build_view(trace, list(prompt_ids), list(out["output_ids"]), values)


def build_view(
    trace: dict, prompt_ids: list[int], output_ids: list[int], logprobs: list[float | None] | None = None
) -> TrainingView:
    """Lay the trace's blocks over prompt + output (raises ValueError if they disagree)."""
    p, total = len(prompt_ids), len(prompt_ids) + len(output_ids)
    if logprobs is not None and len(logprobs) != len(output_ids):
        raise ValueError(f"{len(logprobs)} log-probs for {len(output_ids)} output tokens")
    lay = _Layout(positions=[0] * total, visible=[()] * total, logit_index=list(range(-1, total - 1)),
                  injected=[False] * total)
    for block in trace.get("blocks", []):
        if block.get("fallback") is None and block.get("paths"):
            lay.children.setdefault((block["parent_block"], block["parent_path"]), []).append(block)
    root_blocks = [dict(b, fork_offset=b["fork_offset"] + p) for b in lay.children.get((None, None), [])]
    root_injected = [p + o for o in trace.get("injected", [])]
    _lay_out(lay, start=0, length=total, pos=0, ctx=(), blocks=root_blocks, injected=root_injected)
    return TrainingView(
        input_ids=prompt_ids + output_ids, position_ids=lay.positions, visible=lay.visible, prompt_len=p,
        logit_index=lay.logit_index[p:], injected=lay.injected[p:], logprobs=logprobs,
    )


def _lay_out(lay: _Layout, start: int, length: int, pos: int, ctx: Ranges, blocks: list[dict],
             injected: list[int]) -> int:
    """One sequence (root or path) at [start, start + length); returns its next position."""
    end = start + length
    if end > len(lay.positions):
        raise ValueError("trace describes more tokens than the output has")
    for offset in injected:
        if 0 <= offset < length:  # a join header cut off by max_tokens is not in the text
            lay.injected[start + offset] = True
    cursor = start
    for block in blocks:
        fork = start + block["fork_offset"]  # first index after the fork token t
        if not cursor < fork <= end:
            raise ValueError(f"block {block['id']} forks outside its sequence")
        # Paths restart where the fork separator (if any) started: the separator's
        # tokens share positions with each path's first tokens, as in training.
        pos = _plain(lay, start, cursor, fork, pos, ctx) - block.get("separator", 0)
        branch_ctx = _merge(ctx + ((start, fork),))
        next_pos, b_start = pos, fork
        staged = block.get("staged", False)
        for k, path in enumerate(block["paths"]):
            nested = lay.children.get((block["id"], path["index"]), [])
            path_end = _lay_out(lay, b_start, path["tokens"], pos, branch_ctx, nested, path.get("injected", []))
            if path["tokens"] and not (staged and k > 0):
                lay.logit_index[b_start] = fork - 1  # scored by t's row, not the sibling before it
            if staged:  # its tail was computed after every path before it (sched/staged.py)
                for i in range(b_start + path["tokens"] - path.get("tail", 0), b_start + path["tokens"]):
                    lay.visible[i] = _merge(ctx + ((start, i + 1),))
            # The join continues after the longest path up to its close tag (its tail
            # keeps its own positions but does not count).
            next_pos, b_start = max(next_pos, path_end - path.get("tail", 0)), b_start + path["tokens"]
        cursor, pos = b_start, next_pos
    if cursor > end:
        raise ValueError("trace describes more tokens than the output has")
    return _plain(lay, start, cursor, end, pos, ctx)


def _plain(lay: _Layout, start: int, lo: int, hi: int, pos: int, ctx: Ranges) -> int:
    """Tokens [lo, hi) of the sequence starting at `start`: causal over ctx + own text."""
    for i in range(lo, hi):
        lay.positions[i] = pos
        lay.visible[i] = _merge(ctx + ((start, i + 1),))
        pos += 1
    return pos


def _merge(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- torch at the edge ------------------------------------------------------------------


def bool_mask(view: TrainingView):
    """[T, T] bool tensor: mask[q, k] is True where token q attends to token k."""
    import torch

    t = len(view.input_ids)
    mask = torch.zeros(t, t, dtype=torch.bool)
    for q, ranges in enumerate(view.visible):
        for lo, hi in ranges:
            mask[q, lo:hi] = True
    return mask


def additive_mask(view: TrainingView, dtype=None):
    """[1, 1, T, T] additive mask (0 where visible, dtype min elsewhere), as HF models take."""
    import torch

    dtype = dtype or torch.float32
    mask = bool_mask(view)
    out = torch.zeros(mask.shape, dtype=dtype)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[None, None]
