"""Hook: `sglang.srt.managers.scheduler.Scheduler.get_output_streamer_class` (AFTER),
SGLang 0.5.23 (the seam SGLang provides for custom output streamers).

Branch requests are internal: they never reach the detokenizer. A tracked request's
trace travels with its final output as customized info `npr_trace`, which the
tokenizer-side hook (patches/tokenizer_meta.py) turns into `meta_info["npr_trace"]`.

Live branch text (`npr_branch_deltas`, npr_engine/sched/deltas.py) travels the same way:
when a batch of branches is streamed, their parked streaming roots are streamed with it.
SGLang 0.5.23 sends a streaming request's chunk even with no new tokens (stream interval
1, the default); with a larger `--stream-interval` a parked root sends nothing and its
deltas wait for its next chunk (after the join).
"""

from __future__ import annotations

from npr_engine import host_clock
from npr_engine.core.trace import TRACE_KEY
from npr_engine.hooks import Hook, Kind
from npr_engine.sched.controller import controller_for_any
from npr_engine.sched.deltas import DELTAS_KEY, parked_roots, take_deltas
from npr_engine.sched.state import seq_of


def trace_of(req) -> dict | None:
    """A finished root's trace (its final chunk's customized info); counted in the
    parallel-rate gauge if it has blocks."""
    seq = seq_of(req)
    if seq is None or seq.is_branch:
        return None
    trace = seq.unit.trace
    ctl = controller_for_any()
    if trace.blocks and ctl is not None:
        ctl.metrics.finished(trace.parallel_rate)
    trace.total_tokens = len(req.output_ids)
    out = trace.to_dict()
    closing = seq.unit.closing_text or seq.parser.closing_text()
    if closing:
        out["closing_text"] = closing
    return out


def npr_streamer(base: type) -> type:
    class NprOutputStreamer(base):
        has_additional_customized_info = True
        __slots__ = ()

        def stream_output(self, reqs, return_logprob, skip_req=None):
            visible = _not_branches(reqs) + parked_roots(reqs)
            if visible:
                self.stock_stream_output(visible, return_logprob, skip_req)

        def stock_stream_output(self, reqs, return_logprob, skip_req):
            base.stream_output(self, reqs, return_logprob, skip_req)

        def build_additional_customized_info(self, reqs):
            # `reqs` are the requests whose chunk is sent now: their deltas go with it.
            traces, deltas = [], []
            for req in reqs:
                trace = trace_of(req) if req.finished() else None
                traces.append([trace] if trace is not None else [])
                deltas.append(take_deltas(req))
            info = {TRACE_KEY: traces}
            if any(deltas):
                info[DELTAS_KEY] = deltas
            return info

    NprOutputStreamer.__name__ = f"Npr{base.__name__}"
    if host_clock.enabled():  # our methods are plugin time, the stock call SGLang's
        host_clock.time_methods(NprOutputStreamer, ours=("stream_output", "build_additional_customized_info"),
                                stock=("stock_stream_output",))
    return NprOutputStreamer


def _not_branches(reqs) -> list:
    """`reqs` without branch requests; for the running batch once per partition of the
    controller (npr_engine/sched/calm.py), not per step."""
    ctl = controller_for_any()
    rows = ctl.rows.of(reqs) if ctl is not None else None
    visible = rows.cache.get("visible") if rows is not None else None
    if visible is None:
        visible = [r for r in reqs if (s := r.__dict__.get("npr")) is None or s.block is None]
        if rows is not None:
            rows.cache["visible"] = visible
    return visible


def use_npr_streamer(cls, scheduler, *args, **kwargs):
    return npr_streamer(cls)


HOOKS = [
    Hook(
        "sglang.srt.managers.scheduler.Scheduler.get_output_streamer_class",
        Kind.AFTER,
        use_npr_streamer,
    )
]
