"""Hooks: `sglang.srt.entrypoints.http_server.launch_server` (BEFORE) and
`sglang.srt.utils.auth.add_api_key_middleware` (AFTER), SGLang 0.5.23.

Adds our routes to SGLang's own FastAPI app before it starts serving:
- `GET /npr/info`: our version, SGLang's version, active hooks, known schemas, the
  attention backend and page size, and what the scheduler reported at start-up;
- the `parallel` request field (npr_engine/api/middleware.py);
- `/health` and `/health_generate` answer 503 until the scheduler's handshake says
  the plugin is active there (a server whose scheduler runs unpatched is not healthy).

With `--api-key`, `launch_server` adds SGLang's API-key middleware after our hook ran,
i.e. outside ours, so its 401 (`{"error": "Unauthorized"}`) would bypass our error
shaping; the second hook puts an error-shaping middleware outside it.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from npr_engine.api.middleware import OpenAIErrorMiddleware, ParallelRequestMiddleware
from npr_engine.hooks import Hook, Kind
from npr_engine.info import plugin_status

_HEALTH_PATHS = ("/health", "/health_generate")
_installed_on: set[int] = set()


def _scheduler_status() -> dict | None:
    from sglang.srt.entrypoints import http_server

    state = getattr(http_server, "_global_state", None)
    info = getattr(state, "scheduler_info", None) or {}
    return info.get("npr_plugin")


def _attention() -> dict | None:
    """The attention backend this server runs, and SGLang's default where we changed it."""
    from sglang.srt.entrypoints import http_server

    from npr_engine.compat import backend_choice

    manager = getattr(getattr(http_server, "_global_state", None), "tokenizer_manager", None)
    args = getattr(manager, "server_args", None)
    if args is None:
        return None
    return {"backend": args.attention_backend, "page_size": args.page_size, **backend_choice}


async def npr_info() -> JSONResponse:
    return JSONResponse({**plugin_status(), "scheduler": _scheduler_status(), "attention": _attention()})


async def _gate_health(request: Request, call_next):
    if request.url.path in _HEALTH_PATHS:
        status = _scheduler_status()
        if not status or not status.get("active"):
            return Response(status_code=503)
    return await call_next(request)


def add_routes(*args, **kwargs):
    from sglang.srt.entrypoints.http_server import app

    if id(app) in _installed_on:
        return None
    _installed_on.add(id(app))
    app.add_api_route("/npr/info", npr_info, methods=["GET"])
    app.middleware("http")(_gate_health)
    app.add_middleware(ParallelRequestMiddleware)
    return None


def shape_auth_errors(result, app, *args, **kwargs):
    app.add_middleware(OpenAIErrorMiddleware)  # added last = outermost
    return result


HOOKS = [
    Hook(
        "sglang.srt.entrypoints.http_server.launch_server",
        Kind.BEFORE,
        add_routes,
    ),
    Hook(
        "sglang.srt.utils.auth.add_api_key_middleware",
        Kind.AFTER,
        shape_auth_errors,
    ),
]
