"""Hooks: `sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info`
and `sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._generate_stream_content`
(AROUND), SGLang 0.5.23.

The scheduler sends a request's trace as customized info once, with its final output;
the stock code would accumulate it into a list. We expose it as one object,
`meta_info["npr_trace"]`, and leave every other key to SGLang. Streamed OpenAI
responses pick it up from npr_engine/api/stream.py by request id.

Live branch text (customized info `npr_branch_deltas`) is recorded there by request id
too, not in meta_info: a streaming waiter that falls behind keeps only the latest output's
meta_info. A chat output with no flattened text makes SGLang emit no chunk, so the second
hook emits an empty-delta chunk to carry the request's pending deltas. At a choice's last
output it also puts our reasoning-token count (npr_engine/api/usage.py) into the stream's
per-choice counts, which SGLang's usage chunk sums.
"""

from __future__ import annotations

from sglang.srt.entrypoints.openai.sse_utils import build_sse_content
from sglang.srt.runtime_context import get_serving

from npr_engine.api.stream import has_deltas, record_deltas, record_trace
from npr_engine.api.usage import reply_reasoning_tokens
from npr_engine.core.trace import TRACE_KEY
from npr_engine.hooks import Hook, Kind
from npr_engine.sched.deltas import DELTAS_KEY

_OURS = (TRACE_KEY, DELTAS_KEY)


def trace_as_object(original, manager, meta_info, state, customized_info, index, finish_reason):
    values = customized_info.get(TRACE_KEY)
    deltas = customized_info.get(DELTAS_KEY)
    rest = {k: v for k, v in customized_info.items() if k not in _OURS}
    if rest:
        original(manager, meta_info, state, rest, index, finish_reason)
    if deltas is not None and deltas[index]:
        record_deltas(str(meta_info.get("id", "")), deltas[index])
    if values is not None and values[index]:
        meta_info[TRACE_KEY] = values[index][-1]
        record_trace(str(meta_info.get("id", "")), meta_info[TRACE_KEY])


async def chunk_for_deltas(original, serving, *args, **kwargs):
    """The stock chunks of one output; an empty-delta chunk if there were none and the
    choice has branch deltas pending (the SSE rewriter attaches them). At a choice's last
    output, our reasoning-token count first (its chunks may carry continuous usage)."""
    _count_reasoning(serving, kwargs)
    emitted = False
    async for chunk in original(serving, *args, **kwargs):
        emitted = True
        yield chunk
    content, index = kwargs["content"], kwargs["index"]
    rid = str(content["meta_info"]["id"])
    if not emitted and has_deltas(rid, index):
        yield build_sse_content(chunk_id=rid, created=kwargs["created"], model=kwargs["request"].model,
                                index=index, content="")


def _count_reasoning(serving, kwargs: dict) -> None:
    """`reasoning_tokens` is the stream's {choice index: count}, refreshed from meta_info
    before each output and summed into the usage chunk: set ours at the last output.

    NOTE: needs the whole reply's ids, which a finished output carries unless the server
    runs with `--incremental-streaming-output` (then SGLang's count stays)."""
    if kwargs.get("finish_reason_type") is None or get_serving().incremental_streaming_output:
        return
    count = reply_reasoning_tokens(serving, kwargs["request"], kwargs["content"].get("output_ids") or [])
    if count is not None:
        kwargs["reasoning_tokens"][kwargs["index"]] = count


HOOKS = [
    Hook(
        "sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info",
        Kind.AROUND,
        trace_as_object,
    ),
    Hook(
        "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._generate_stream_content",
        Kind.AROUND,
        chunk_for_deltas,
    ),
]
