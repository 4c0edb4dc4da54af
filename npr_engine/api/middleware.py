"""ASGI middleware on SGLang's FastAPI app for the generation endpoints.

It rewrites our request fields before SGLang parses the body (so SGLang's request
models stay untouched), adds our fields to streamed events, and gives every 4xx/5xx
body OpenAI's error shape (SGLang's own are flat today). The native `/generate` only
gets its request checked: its responses keep SGLang's native shape."""

from __future__ import annotations

import json

from npr_engine.api.errors import RequestError, error_bytes
from npr_engine.api.guards import check_request
from npr_engine.api.request import check_native_body, rewrite_body
from npr_engine.api.response_rewriter import ResponseRewriter

OPENAI_GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
NATIVE_GENERATION_PATH = "/generate"
_PATHS = (*OPENAI_GENERATION_PATHS, NATIVE_GENERATION_PATH)


class ParallelRequestMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT") or scope["path"] not in _PATHS:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        openai = scope["path"] in OPENAI_GENERATION_PATHS
        try:
            body = _prepare(scope["path"], body)
        except RequestError as exc:
            await _send_error(send, str(exc), exc.param)
            return
        replayed = False

        async def replay():
            # NOTE: later receive() calls reach the client, so SGLang still sees a disconnect.
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, ResponseRewriter(send).send if openai else send)


class OpenAIErrorMiddleware:
    """Gives the generation endpoints' error bodies OpenAI's shape, and every 401 under
    /v1/ too: installed outside SGLang's API-key middleware (patches/http_routes.py),
    whose 401 is {"error": "Unauthorized"}. Other /v1/ errors (`/v1/score`, say) keep
    SGLang's own body, as stock SGLang answers them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        only = None if scope["path"] in OPENAI_GENERATION_PATHS else 401
        await self.app(scope, receive, ResponseRewriter(send, sse=False, only_status=only).send)


async def _read_body(receive) -> bytes | None:
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _prepare(path: str, body: bytes) -> bytes:
    """The body SGLang will parse: checked, and with our fields rewritten (OpenAI endpoints)."""
    data = _json_object(body)
    if data is None:
        return body  # SGLang reports malformed JSON itself
    check_request(path, data)
    if path not in OPENAI_GENERATION_PATHS:
        check_native_body(data)
        return body
    return json.dumps(data).encode() if rewrite_body(data) else body


def _json_object(body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _send_error(send, message: str, param: str | None, status: int = 400) -> None:
    payload = error_bytes(message, status, param)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
