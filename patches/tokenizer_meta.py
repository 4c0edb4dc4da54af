"""Hook: `sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info`
(AROUND), SGLang 0.5.23.

The scheduler sends a request's trace as customized info once, with its final output;
the stock code would accumulate it into a list. We expose it as one object,
`meta_info["npr_trace"]`, and leave every other key to SGLang. Streamed OpenAI
responses pick it up from npr_engine/api/stream.py by request id.
"""

from __future__ import annotations

from npr_engine.api.stream import record_trace
from npr_engine.core.trace import TRACE_KEY
from npr_engine.hooks import Hook, Kind


def trace_as_object(original, manager, meta_info, state, customized_info, index, finish_reason):
    values = customized_info.get(TRACE_KEY)
    rest = {k: v for k, v in customized_info.items() if k != TRACE_KEY}
    if rest:
        original(manager, meta_info, state, rest, index, finish_reason)
    if values is not None and values[index]:
        meta_info[TRACE_KEY] = values[index][-1]
        record_trace(str(meta_info.get("id", "")), meta_info[TRACE_KEY])


HOOKS = [
    Hook(
        "sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info",
        Kind.AROUND,
        trace_as_object,
    )
]
