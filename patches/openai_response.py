"""Hooks: `OpenAIServingChat._build_chat_response` and
`OpenAIServingCompletion._build_completion_response` (AFTER), SGLang 0.5.23.

Both build the final non-streaming response from the engine outputs (`ret`), whose
meta_info carries our trace. We return it serialized with our fields added; SGLang's
route passes a non-pydantic response through unchanged.
"""

from __future__ import annotations

import json

from fastapi.responses import Response

from npr_engine.api.response import add_parallel_fields, traces_of
from npr_engine.hooks import Hook, Kind


def with_parallel_fields(response, serving, request, ret, *args, **kwargs):
    traces = traces_of(ret)
    if not any(t is not None for t in traces) or not hasattr(response, "choices"):
        return response
    payload = add_parallel_fields(response.model_dump(mode="json", by_alias=True), traces)
    return Response(content=json.dumps(payload), media_type="application/json")


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
