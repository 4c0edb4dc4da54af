"""The server's own OpenAPI document, cut to the two OpenAI generation endpoints and
bounded so a schemathesis run stays cheap on a CPU (issue 5): `max_tokens` <= 16
(and required: without it a chat reply may run to the context length), `n` <= 2,
plus our `parallel` field, which SGLang's request models do not declare.
"""

from __future__ import annotations

import copy

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
REQUEST_SCHEMAS = ("ChatCompletionRequest", "CompletionRequest")
MAX_TOKENS = 16
MAX_N = 2

PARALLEL_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "schema": {"type": "string", "enum": ["parallel", "npr", "multiverse"]},
        "enabled": {"type": "boolean"},
        "force": {"type": "boolean"},
        "paths": {"type": "integer", "minimum": 1, "maximum": 8},
        "max_paths": {"type": "integer", "minimum": 1, "maximum": 8},
        "max_depth": {"type": "integer", "minimum": 0, "maximum": 2},
        "max_path_tokens": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}, {"type": "null"}]},
        "positions": {"type": "string", "enum": ["shared"]},
    },
}
# Any value under the same keys: our 400 paths get exercised by positive generation too
# (schemathesis' negative mode is far too slow on SGLang's large request schemas).
ANY_PARALLEL_OPTIONS = {"type": "object", "properties": {key: {} for key in PARALLEL_OPTIONS["properties"]}}
PARALLEL_FIELD = {"anyOf": [{"type": "boolean"}, PARALLEL_OPTIONS, ANY_PARALLEL_OPTIONS]}


def _bounded_int(maximum: int, minimum: int = 1, nullable: bool = False) -> dict:
    # Positive cases are then valid (negative mode still sends values outside the bounds).
    bounded = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return {"anyOf": [bounded, {"type": "null"}]} if nullable else bounded


def bound_request(schema: dict) -> None:
    props = schema["properties"]
    props["max_tokens"] = _bounded_int(MAX_TOKENS)
    schema["required"] = sorted({*schema.get("required", []), "max_tokens"})
    if "max_completion_tokens" in props:
        props["max_completion_tokens"] = _bounded_int(MAX_TOKENS, nullable=True)
    props["min_tokens"] = _bounded_int(MAX_TOKENS, minimum=0)
    props["n"] = _bounded_int(MAX_N)
    if "best_of" in props:
        props["best_of"] = _bounded_int(MAX_N, nullable=True)
    if "messages" in props:
        props["messages"]["minItems"] = 1  # SGLang answers 400 to an empty list
    props["parallel"] = copy.deepcopy(PARALLEL_FIELD)


def bounded_generation_document(raw: dict) -> dict:
    """A copy of `raw` (FastAPI's /openapi.json) with only the two endpoints, bounded."""
    doc = copy.deepcopy(raw)
    doc["paths"] = {path: {"post": doc["paths"][path]["post"]} for path in GENERATION_PATHS}
    for name in REQUEST_SCHEMAS:
        bound_request(doc["components"]["schemas"][name])
    return doc
