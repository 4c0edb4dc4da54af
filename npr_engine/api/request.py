"""The `parallel` request field of /v1/chat/completions and /v1/completions.

Validated here and written into `custom_params["npr"]`, which SGLang carries to the
scheduler untouched (DESIGN.md section 6). Requests that combine parallel blocks with
a grammar or tools are refused or have blocks switched off (npr_engine/api/conflicts.py).
"""

from __future__ import annotations

from npr_engine.api.conflicts import NATIVE_SWITCH_OFF, conflict_message, native_conflict, openai_conflict
from npr_engine.api.errors import RequestError
from npr_engine.core.options import OPTIONS_KEY, InvalidNprOptions, NprOptions
from npr_engine.grammar.schemas import known_schemas

PARALLEL_FIELD = "parallel"
CUSTOM_FIELD = "custom_params"


class BadParallelRequest(RequestError):
    """Invalid `parallel` options, or parallel blocks beside a grammar or tools."""


def rewrite_body(body: dict) -> bool:
    """Move `parallel` into custom_params and apply the conflict rule, in place.

    Returns whether the body changed; raises BadParallelRequest on invalid input."""
    custom = body.get(CUSTOM_FIELD)
    if custom is not None and not isinstance(custom, dict):
        raise BadParallelRequest("custom_params must be an object", CUSTOM_FIELD)
    custom = custom or {}
    if PARALLEL_FIELD in body:
        options = _parse(_as_dict(body.pop(PARALLEL_FIELD)), PARALLEL_FIELD)
    elif OPTIONS_KEY in custom:
        options = _parse(custom[OPTIONS_KEY], f"{CUSTOM_FIELD}.{OPTIONS_KEY}")
    else:
        options = None  # the request did not ask for blocks: server defaults apply
    conflict = openai_conflict(body)
    if conflict and options is not None and options.enabled:
        raise BadParallelRequest(conflict_message(conflict), conflict)
    if conflict and options is None:
        # NOTE: the defaults have blocks enabled; a grammar must not meet a fork it cannot follow.
        options = NprOptions(enabled=False)
    return options is not None and _write(body, custom, options)


def _as_dict(raw: object) -> object:
    return {"enabled": raw} if isinstance(raw, bool) else raw


def _parse(raw: object, where: str) -> NprOptions:
    _check_schema_name(raw, where)
    try:
        return NprOptions.from_dict(raw)
    except InvalidNprOptions as exc:
        raise BadParallelRequest(str(exc), f"{where}.{exc.field}" if exc.field else where) from exc


def _check_schema_name(raw: object, where: str) -> None:
    """Over HTTP a schema is a registered name or the server's own `--tag-schema`.

    NOTE: NprOptions also takes a JSON file path (offline use); from a client that would
    let any request make the server read, and probe for, files on its disk."""
    name = raw.get("schema") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name or name in known_schemas() or name == NprOptions().schema:
        return
    raise BadParallelRequest(f"parallel.schema: unknown schema {name!r} (known: {', '.join(known_schemas())})",
                             f"{where}.schema")


def _write(body: dict, custom: dict, options: NprOptions) -> bool:
    body[CUSTOM_FIELD] = {**custom, OPTIONS_KEY: options.to_dict()}
    return True


def check_native_body(body: dict) -> None:
    """`/generate`: refuse explicit NPR options beside a grammar (blocks are not switched off
    implicitly here: the offline `sglang.Engine` takes the same sampling_params without HTTP)."""
    params = body.get("sampling_params")
    for item in params if isinstance(params, list) else [params]:
        if not isinstance(item, dict) or not isinstance(item.get(CUSTOM_FIELD), dict):
            continue
        if OPTIONS_KEY not in item[CUSTOM_FIELD]:
            continue
        _check_schema_name(item[CUSTOM_FIELD][OPTIONS_KEY], f"sampling_params.{CUSTOM_FIELD}.{OPTIONS_KEY}")
        try:
            enabled = NprOptions.from_dict(item[CUSTOM_FIELD][OPTIONS_KEY]).enabled
        except InvalidNprOptions:
            continue  # SGLang's sampling-params check (patches/sampling_params.py) reports it
        conflict = native_conflict(item)
        if enabled and conflict:
            raise BadParallelRequest(conflict_message(conflict, NATIVE_SWITCH_OFF), f"sampling_params.{conflict}")
