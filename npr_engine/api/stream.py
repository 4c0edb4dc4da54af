"""Our fields in streamed OpenAI responses: `branch_deltas` (live per-branch text while a
block runs), `parallel_trace` on the final chunk of each choice, and
`critical_path_tokens` on the usage chunk.

Both reach the HTTP process in the request's outputs; the tokenizer-side hooks
(patches/tokenizer_meta.py) record them here by request id, and the middleware adds them
to the server-sent events as they pass: a choice's pending deltas go with its next event,
which a hook makes sure exists (an empty-delta chunk) when no flattened text moved.
"""

from __future__ import annotations

import json
from collections import OrderedDict

_MAX_KEPT = 4096
_traces: OrderedDict[str, dict] = OrderedDict()


def record_trace(rid: str, trace: dict) -> None:
    _traces[rid] = trace
    while len(_traces) > _MAX_KEPT:
        _traces.popitem(last=False)


def _take(rid: str, index: int) -> dict | None:
    # n > 1: SGLang runs choice i as request f"{rid}_{i}".
    return _traces.pop(f"{rid}_{index}", None) or _traces.pop(rid, None)


# Unsent branch deltas by request id, then by (block, path).
# NOTE: bounded like the traces: streams nobody rewrites (native /generate, a client gone)
# leave theirs behind.
_deltas: OrderedDict[str, dict[tuple[int, int], dict]] = OrderedDict()


def record_deltas(rid: str, deltas: list[dict]) -> None:
    pending = _deltas.setdefault(rid, {})
    for delta in deltas:
        key = (delta["block"], delta["path"])
        if key in pending:
            pending[key]["text"] += delta["text"]
        else:
            pending[key] = dict(delta)
    while len(_deltas) > _MAX_KEPT:
        _deltas.popitem(last=False)


def has_deltas(rid: str, index: int) -> bool:
    return f"{rid}_{index}" in _deltas or rid in _deltas


def _take_deltas(rid: str, index: int) -> list[dict]:
    pending = _deltas.pop(f"{rid}_{index}", None) or _deltas.pop(rid, None)
    return list(pending.values()) if pending else []


class SseRewriter:
    """Rewrites `data: {...}` events of one streamed response."""

    def __init__(self) -> None:
        self._buffer = b""
        self._critical: dict[int, int] = {}

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            out.append(self._event(event) + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            return event
        try:
            data = json.loads(event[6:])
        except ValueError:
            return event
        if not isinstance(data, dict):
            return event
        changed = False
        for choice in data.get("choices") or []:
            deltas = _take_deltas(str(data.get("id", "")), choice.get("index", 0))
            if deltas:
                choice["branch_deltas"] = deltas
                changed = True
            if choice.get("finish_reason") is not None:
                trace = _take(str(data.get("id", "")), choice.get("index", 0))
                if trace is not None:
                    choice["parallel_trace"] = {k: v for k, v in trace.items() if k != "closing_text"}
                    self._critical[choice.get("index", 0)] = trace["critical_path_tokens"]
                    changed = True
        if data.get("usage") and self._critical:
            data["usage"]["critical_path_tokens"] = max(self._critical.values())
            changed = True
        return b"data: " + json.dumps(data).encode() if changed else event
