"""Hooks: `sglang.srt.managers.schedule_batch.Req._stop_match_tail_len` (AROUND) and
`sglang.srt.managers.detokenizer_manager.DetokenizerManager.trim_matched_stop` (AROUND),
SGLang 0.5.23.

User stop strings apply outside branches only (DESIGN.md section 6). Branches carry no
stop strings, but a joined root's output ids hold every branch's tokens, and SGLang
matches stop strings over the last few output tokens: right after a join those are
the end of the last branch. So a root's stop window never reaches back before the
join header of its latest block. And when the reply does stop (in a summary or after
the block), the detokenizer cuts the text at the *first* occurrence of the stop
string, which may lie in a branch: it cuts at the last one instead. That is the same
cut for every request: decoding stops at the first match, so the stop string ends
the text.
"""

from __future__ import annotations

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.state import seq_of


def join_floor(req) -> int | None:
    """Output index of the latest top-level join header of a joined root, else None."""
    seq = seq_of(req)
    if seq is None or seq.is_branch or not seq.unit.joined:
        return None
    if seq.stage is not None:  # a staged join writes path text: only its newest token
        return len(req.output_ids) - 1
    joined = [b for b in seq.unit.trace.blocks if b.parent_block is None and b.fallback is None and b.join_tokens]
    if not joined:
        return None
    last = joined[-1]
    return last.fork_offset + sum(p.tokens for p in last.paths)


def stop_window_after_join(original, req, *args, **kwargs) -> int:
    tail = original(req, *args, **kwargs)
    floor = join_floor(req)
    if floor is None:
        return tail
    return max(min(tail, len(req.output_ids) - floor), 1)


def trim_at_last_match(original, manager, output, finished_reason, no_stop_trim, *args, **kwargs):
    matched = (finished_reason or {}).get("matched")
    if not (isinstance(matched, str) and isinstance(output, str)):
        return original(manager, output, finished_reason, no_stop_trim, *args, **kwargs)
    pos = output.rfind(matched)
    if pos == -1:
        return output
    return output[: pos + len(matched)] if no_stop_trim else output[:pos]


HOOKS = [
    Hook("sglang.srt.managers.schedule_batch.Req._stop_match_tail_len", Kind.AROUND, stop_window_after_join),
    Hook("sglang.srt.managers.detokenizer_manager.DetokenizerManager.trim_matched_stop", Kind.AROUND,
         trim_at_last_match),
]
