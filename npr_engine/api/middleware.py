"""ASGI middleware on SGLang's FastAPI app for the OpenAI generation endpoints.

It rewrites our request fields before SGLang parses the body (so SGLang's request
models stay untouched), adds our fields to streamed events, and gives every 4xx/5xx
body OpenAI's error shape (SGLang's own are flat today)."""

from __future__ import annotations

import json

from npr_engine.api.errors import error_bytes, openai_error_body
from npr_engine.api.request import BadParallelRequest, rewrite_body
from npr_engine.api.stream import SseRewriter

OPENAI_GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


class ParallelRequestMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in OPENAI_GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            body = _rewrite(body)
        except BadParallelRequest as exc:
            await _send_error(send, str(exc), exc.param)
            return
        replayed = False
        response = _ResponseRewriter(send)

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, response.send)


class _ResponseRewriter:
    """Adds our fields to streamed events and gives every error body OpenAI's shape."""

    def __init__(self, send):
        self._send = send
        self._mode = "pass"
        self._start: dict | None = None
        self._sse = SseRewriter()
        self._error = b""

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            ctype = dict(message.get("headers") or []).get(b"content-type", b"")
            if ctype.startswith(b"text/event-stream"):
                self._mode = "sse"
            elif message["status"] >= 400 and ctype.startswith(b"application/json"):
                self._mode, self._start = "error", message
                return  # sent with the rewritten body, whose length changes
        elif message["type"] == "http.response.body" and self._mode == "sse":
            body = self._sse.feed(message.get("body", b""))
            if not message.get("more_body", False):
                body += self._sse.flush()
            message = {**message, "body": body}
        elif message["type"] == "http.response.body" and self._mode == "error":
            self._error += message.get("body", b"")
            if message.get("more_body", False):
                return
            body = openai_error_body(self._error, self._start["status"])
            headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await self._send({**self._start, "headers": headers})
            message = {"type": "http.response.body", "body": body}
        await self._send(message)


def _rewrite(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body  # SGLang reports malformed JSON itself
    if not isinstance(data, dict) or "parallel" not in data:
        return body
    return json.dumps(rewrite_body(data)).encode()


async def _send_error(send, message: str, param: str | None, status: int = 400) -> None:
    payload = error_bytes(message, status, param)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
