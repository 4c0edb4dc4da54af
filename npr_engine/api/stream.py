"""Our fields in streamed OpenAI responses: `branch_deltas` (live per-branch text while a
block runs), `parallel_trace` on the final chunk of each choice, and
`critical_path_tokens` on the usage chunk.

Both reach the HTTP process in the request's outputs; the tokenizer-side hooks
(patches/tokenizer_meta.py) record them here by request id, and the middleware adds them
to the server-sent events as they pass: a choice's pending deltas go with its next event,
which a hook makes sure exists (an empty-delta chunk) when no flattened text moved.

One thing is taken out: with a reasoning parser on (ours always is), SGLang 0.5.23 sends
a chat chunk that carries only log-probs (no content, no reasoning, no finish reason)
whenever a step's token produced no text, the EOS token at the end above all; stock
SGLang without a parser never sends that shape. Its log-probs go with the choice's next
event instead (the finish chunk at the end), so none is lost.
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
        # Held log-prob-only chunks by choice index: (their events, their log-prob entries).
        self._held: dict[int, tuple[list[bytes], list]] = {}

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            out += [e + b"\n\n" for e in self._events(event)]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return b"".join(e + b"\n\n" for e in self._release_held()) + rest

    def _release_held(self) -> list[bytes]:
        """Held chunks no later event took (a stream cut short), as they came."""
        events = [e for held, _ in self._held.values() for e in held]
        self._held.clear()
        return events

    def _events(self, event: bytes) -> list[bytes]:
        if event == b"data: [DONE]":
            return [*self._release_held(), event]
        out = self._event(event)
        return [] if out is None else [out]

    def _event(self, event: bytes) -> bytes | None:
        if not event.startswith(b"data: "):
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
            if not deltas and _only_logprobs(data, choice):
                events, entries = self._held.setdefault(choice.get("index", 0), ([], []))
                events.append(event)
                entries += choice["logprobs"]["content"]
                return None
            changed |= self._merge_held(choice)
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

    def _merge_held(self, choice: dict) -> bool:
        held = self._held.pop(choice.get("index", 0), None)
        if held is None:
            return False
        logprobs = choice.get("logprobs") or {}
        choice["logprobs"] = {**logprobs, "content": held[1] + (logprobs.get("content") or [])}
        return True


def _only_logprobs(data: dict, choice: dict) -> bool:
    """A chat chunk of one choice that carries nothing but log-prob entries."""
    if data.get("object") != "chat.completion.chunk" or len(data["choices"]) != 1 or data.get("usage"):
        return False
    delta = choice.get("delta") or {}
    logprobs = choice.get("logprobs") or {}
    return (choice.get("finish_reason") is None and bool(logprobs.get("content"))
            and not any(delta.get(k) for k in ("role", "content", "reasoning_content", "tool_calls")))
