"""OpenAI-shaped error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json


class RequestError(ValueError):
    """A request our HTTP layer refuses with 400; `param` names the offending field."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


# OpenAI's own codes; clients match on them.
_CODES = {401: "invalid_api_key"}


def openai_error(message: str, status: int = 400, param: str | None = None, code: str | None = None) -> dict:
    # OpenAI answers a missing or wrong key with invalid_request_error + code invalid_api_key.
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 404:
        kind = "not_found_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_bytes(message: str, status: int = 400, param: str | None = None) -> bytes:
    return json.dumps(openai_error(message, status, param)).encode()


def openai_error_body(body: bytes, status: int) -> bytes:
    """Any error body -> {"error": {...}}; SGLang's flat ErrorResponse keeps its fields."""
    try:
        data = json.loads(body)
    except ValueError:
        data = {"message": body.decode(errors="replace")}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return body  # already OpenAI-shaped
    if not isinstance(data, dict):
        data = {"message": str(data)}
    # SGLang's auth middleware answers {"error": "Unauthorized"}; validation errors use message/detail.
    message = data.get("message") or data.get("detail") or data.get("error") or "request failed"
    if not isinstance(message, str):
        message = json.dumps(message)
    if status == 401:
        message += ": missing or wrong API key (send the header `Authorization: Bearer <key>`)"
    error = openai_error(message, status, data.get("param"), _CODES.get(status))
    return json.dumps(error).encode()
