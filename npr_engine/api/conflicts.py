"""Request features that cannot be combined with parallel blocks yet.

A grammar (response_format json_object/json_schema/structural_tag, or SGLang's
`regex` / `ebnf` / `json_schema` fields) is one automaton advanced token by token;
branches would need one automaton state each and a join rule, which SGLang's grammar
backends do not offer. Tool calls (`tools` with `tool_choice` other than "none") are
parsed out of one serial reply and may be grammar-constrained too. Until that is
built, a request that asks for parallel blocks *and* one of these gets a 400 naming the
conflicting field; one that did not ask (no `parallel`, no `custom_params.npr`) has
blocks switched off instead, so ordinary OpenAI requests keep working.
"""

from __future__ import annotations

from typing import Any

# SGLang's constraint fields, on the OpenAI request bodies and in native sampling_params.
CONSTRAINT_FIELDS = ("regex", "ebnf", "json_schema")
NATIVE_CONSTRAINT_FIELDS = (*CONSTRAINT_FIELDS, "structural_tag")


def openai_conflict(body: dict) -> str | None:
    """The first field of an OpenAI request body that rules out parallel blocks."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        return "response_format"
    for name in CONSTRAINT_FIELDS:
        if body.get(name) is not None:
            return name
    if body.get("tools") and body.get("tool_choice") != "none":
        return "tools"
    return None


def native_conflict(sampling_params: Any) -> str | None:
    """The first constraint field set in one native `/generate` sampling_params dict."""
    if not isinstance(sampling_params, dict):
        return None
    return next((name for name in NATIVE_CONSTRAINT_FIELDS if sampling_params.get(name) is not None), None)


OPENAI_SWITCH_OFF = '"parallel": {"enabled": false} (or leave `parallel` out)'
NATIVE_SWITCH_OFF = '"custom_params": {"npr": {"enabled": false}}'


def conflict_message(field: str, switch_off: str = OPENAI_SWITCH_OFF) -> str:
    return f"`{field}` cannot be combined with parallel blocks yet; send {switch_off} to use it"
