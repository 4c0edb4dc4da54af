"""The `parallel` request field of /v1/chat/completions and /v1/completions.

Validated here and written into `custom_params["npr"]`, which SGLang carries to the
scheduler untouched (DESIGN.md section 6).
"""

from __future__ import annotations

from npr_engine.core.options import OPTIONS_KEY, InvalidNprOptions, NprOptions

PARALLEL_FIELD = "parallel"


class BadParallelRequest(ValueError):
    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


def rewrite_body(body: dict) -> dict:
    """Move `parallel` into custom_params; raise BadParallelRequest on invalid input."""
    if PARALLEL_FIELD not in body:
        return body
    raw = body.pop(PARALLEL_FIELD)
    if isinstance(raw, bool):
        raw = {"enabled": raw}
    try:
        options = NprOptions.from_dict(raw)
    except InvalidNprOptions as exc:
        param = f"{PARALLEL_FIELD}.{exc.field}" if exc.field else PARALLEL_FIELD
        raise BadParallelRequest(str(exc), param) from exc
    custom = body.get("custom_params")
    if custom is not None and not isinstance(custom, dict):
        raise BadParallelRequest("custom_params must be an object", "custom_params")
    body["custom_params"] = {**(custom or {}), OPTIONS_KEY: options.to_dict()}
    return body
