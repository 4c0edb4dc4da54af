"""Hook: `sglang.srt.managers.detokenizer_manager.DetokenizerManager._decode_batch_token_id_output`
(AFTER), SGLang 0.5.23.

When a reply ends inside a block (EOS or max_tokens in a summary, or inside the
paths), the engine appends the missing close tags to the returned text, never to the
KV (DESIGN.md section 6, "Forced summary end"). The scheduler sends them in the final
trace; the detokenizer appends them to that request's last text delta.
"""

from __future__ import annotations

from sglang.srt.managers.io_struct import unwrap_from_pickle

from npr_engine.core.trace import TRACE_KEY
from npr_engine.hooks import Hook, Kind


def append_closing_text(output_strs, manager, recv_obj, *args, **kwargs):
    info = unwrap_from_pickle(recv_obj.customized_info) if recv_obj.customized_info else None
    traces = (info or {}).get(TRACE_KEY)
    if not traces:
        return output_strs
    for i, values in enumerate(traces):
        closing = values[-1].get("closing_text") if values else None
        if closing and i < len(output_strs):
            output_strs[i] = output_strs[i] + closing
    return output_strs


HOOKS = [
    Hook(
        "sglang.srt.managers.detokenizer_manager.DetokenizerManager._decode_batch_token_id_output",
        Kind.AFTER,
        append_closing_text,
    )
]
