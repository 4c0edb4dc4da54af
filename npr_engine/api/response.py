"""Our fields in non-streaming OpenAI responses: `choices[i].parallel_trace` and
`usage.critical_path_tokens` (DESIGN.md section 6)."""

from __future__ import annotations

from npr_engine.core.trace import TRACE_KEY


def traces_of(ret: list[dict]) -> list[dict | None]:
    return [(item.get("meta_info") or {}).get(TRACE_KEY) for item in ret]


def add_parallel_fields(payload: dict, traces: list[dict | None]) -> dict:
    """payload: a serialized chat/completion response whose choices follow `ret` order."""
    for choice, trace in zip(payload.get("choices", []), traces, strict=False):
        if trace is not None:
            choice["parallel_trace"] = {k: v for k, v in trace.items() if k != "closing_text"}
    critical = [t["critical_path_tokens"] for t in traces if t is not None]
    if critical and payload.get("usage") is not None:
        # Choices decode concurrently: the request waits for its longest chain.
        payload["usage"]["critical_path_tokens"] = max(critical)
    return payload
