"""Rewrites one HTTP response on its way out: our fields in streamed events, and
OpenAI's error shape for JSON error bodies (whose length then changes)."""

from __future__ import annotations

from npr_engine.api.errors import openai_error_body
from npr_engine.api.stream import SseRewriter


class ResponseRewriter:
    def __init__(self, send, sse: bool = True, only_status: int | None = None):
        self._send = send
        self._sse_enabled = sse
        self._only_status = only_status  # rewrite only error bodies with this status
        self._mode = "pass"
        self._start: dict | None = None
        self._sse = SseRewriter()
        self._error = b""

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            message = self._on_start(message)
        elif message["type"] == "http.response.body" and self._mode == "sse":
            message = self._on_sse(message)
        elif message["type"] == "http.response.body" and self._mode == "error":
            message = await self._on_error_body(message)
        if message is not None:
            await self._send(message)

    def _on_start(self, message: dict) -> dict | None:
        ctype = dict(message.get("headers") or []).get(b"content-type", b"")
        if self._sse_enabled and ctype.startswith(b"text/event-stream"):
            self._mode = "sse"
        elif (message["status"] >= 400 and ctype.startswith(b"application/json")
              and self._only_status in (None, message["status"])):
            self._mode, self._start = "error", message
            return None  # sent with the rewritten body
        return message

    def _on_sse(self, message: dict) -> dict:
        body = self._sse.feed(message.get("body", b""))
        if not message.get("more_body", False):
            body += self._sse.flush()
        return {**message, "body": body}

    async def _on_error_body(self, message: dict) -> dict | None:
        self._error += message.get("body", b"")
        if message.get("more_body", False):
            return None
        body = openai_error_body(self._error, self._start["status"])
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        return {"type": "http.response.body", "body": body}
