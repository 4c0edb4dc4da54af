"""Hooks: `OpenAIServingChat._build_chat_response` and
`OpenAIServingCompletion._build_completion_response` (AFTER), SGLang 0.5.23.

Both build the final non-streaming response from the engine outputs (`ret`), whose
meta_info carries our trace. We return it serialized with our fields added; SGLang's
route passes a non-pydantic response through unchanged. Chat replies also get their
`usage.reasoning_tokens` counted by us (npr_engine/api/usage.py).
"""

from __future__ import annotations

import json

from fastapi.responses import Response
from sglang.srt.entrypoints.openai.protocol import CompletionTokensDetails

from npr_engine.api.response import add_parallel_fields, traces_of
from npr_engine.api.usage import reply_reasoning_tokens
from npr_engine.hooks import Hook, Kind


def with_parallel_fields(response, serving, request, ret, *args, **kwargs):
    if not hasattr(response, "choices"):
        return response
    counts = [reply_reasoning_tokens(serving, request, item.get("output_ids") or []) for item in ret]
    if None not in counts:
        set_reasoning_tokens(response.usage, sum(counts))
    traces = traces_of(ret)
    if not any(t is not None for t in traces):
        return response
    payload = add_parallel_fields(response.model_dump(mode="json", by_alias=True), traces)
    return Response(content=json.dumps(payload), media_type="application/json")


def set_reasoning_tokens(usage, total: int) -> None:
    """Both places SGLang reports the count, as UsageProcessor.calculate_token_usage
    fills them (OpenAI's `completion_tokens_details` only when there are some)."""
    if usage is None:
        return
    usage.reasoning_tokens = total
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=total) if total else None


HOOKS = [
    Hook(
        "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._build_chat_response",
        Kind.AFTER,
        with_parallel_fields,
    ),
    Hook(
        "sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._build_completion_response",
        Kind.AFTER,
        with_parallel_fields,
    ),
]
