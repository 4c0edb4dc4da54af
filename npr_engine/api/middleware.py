"""ASGI middleware on SGLang's FastAPI app: rewrites our request fields before SGLang
parses the body, so SGLang's own request models stay untouched."""

from __future__ import annotations

import json

from npr_engine.api.errors import error_bytes
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
        rewriter = SseRewriter()

        async def send_with_trace(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                scope["npr.sse"] = streaming
            elif message["type"] == "http.response.body" and scope.get("npr.sse"):
                body_out = rewriter.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    body_out += rewriter.flush()
                message = {**message, "body": body_out}
            await send(message)

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_trace)


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
