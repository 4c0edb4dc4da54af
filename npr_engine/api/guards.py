"""Requests that would take SGLang 0.5.23's scheduler down are refused with a 400.

All were found by the schemathesis run (issue 5); each kills the scheduler process,
and with it the whole server, from a single request:
- an empty prompt inside a batch (`"prompt": ["", "hi"]`, `"text": ""`): SGLang refuses
  only all-empty completions prompts, and a zero-token sequence fails in the forward;
- token-id prompts with an id outside [0, vocab_size): SGLang checks `token_ids_logprob`
  but not the prompt, and the embedding lookup raises IndexError;
- a `custom_logit_processor` that does not deserialize (with
  `--enable-custom-logit-processor`): the scheduler parses it while building a batch;
- a `rid` list for a single prompt (or of another length than the batch): a 500;
- a top-log-prob count above the vocabulary size (`top_logprobs` of a chat request,
  `logprobs` of a completion, `top_logprobs_num` of /generate): the sampler's `topk`
  raises "selected index k out of range".
"""

from __future__ import annotations

from typing import Any

from npr_engine.api.errors import RequestError

# Where each endpoint takes token ids: a flat list, or a list of lists (a batch).
TOKEN_ID_FIELDS = {
    "/v1/completions": ("prompt",),
    "/v1/chat/completions": ("input_ids",),
    "/generate": ("input_ids",),
}
PROCESSOR_FIELD = "custom_logit_processor"
PROMPT_FIELDS = {
    "/v1/completions": ("prompt",),
    "/generate": ("text", "input_ids"),
}
TOP_LOGPROB_FIELDS = {
    "/v1/completions": "logprobs",
    "/v1/chat/completions": "top_logprobs",
    "/generate": "top_logprobs_num",
}


def _tokenizer_manager():
    from sglang.srt.entrypoints import http_server

    return getattr(getattr(http_server, "_global_state", None), "tokenizer_manager", None)


def check_request(path: str, body: dict) -> None:
    """Raise RequestError (naming the field) for a request that would crash the scheduler."""
    top = TOP_LOGPROB_FIELDS.get(path)
    _check_rid(body.get("rid"), [body.get(f) for f in PROMPT_FIELDS.get(path, ())])
    _check_all(_tokenizer_manager(),
               prompts={f: body.get(f) for f in PROMPT_FIELDS.get(path, ())},
               token_ids={f: body.get(f) for f in TOKEN_ID_FIELDS.get(path, ())},
               top_logprobs={top: body.get(top)} if top else {},
               processors=body.get(PROCESSOR_FIELD))


def _check_rid(rid: Any, prompts: list) -> None:
    """`rid`: a string, or for a batch of prompts a list of strings, one per prompt.
    (A list for one prompt reached SGLang's request table as a key: 500 "unhashable
    type: 'list'".)"""
    if rid is None or isinstance(rid, str):
        return
    batch = next((len(p) for p in prompts if _is_batch(p)), None)
    if not isinstance(rid, list) or not all(isinstance(r, str) for r in rid) or batch != len(rid):
        raise RequestError("rid must be a string, or a list of strings with one per prompt of a batch", "rid")


def _is_batch(prompt: Any) -> bool:
    """A list of prompts (strings or token-id lists), not one token-id prompt."""
    return isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)


def check_generate_input(manager, obj) -> None:
    """The same refusals for a GenerateReqInput at the tokenizer manager, so callers of
    the offline `sglang.Engine` (which skip the HTTP middleware) get a RequestError, a
    ValueError, instead of a dead scheduler."""
    fields = {f: getattr(obj, f, None) for f in ("text", "input_ids")}
    _check_all(manager, prompts=fields, token_ids={"input_ids": fields["input_ids"]},
               top_logprobs={"top_logprobs_num": getattr(obj, "top_logprobs_num", None)},
               processors=getattr(obj, PROCESSOR_FIELD, None))


def _check_all(manager, prompts: dict, token_ids: dict, top_logprobs: dict, processors: Any) -> None:
    if manager is None:
        return  # not serving yet
    for field, value in prompts.items():
        _check_not_empty(field, value)
    vocab_size = getattr(getattr(manager, "model_config", None), "vocab_size", None)
    if vocab_size:
        for field, value in token_ids.items():
            _check_token_ids(field, value, vocab_size)
        for field, value in top_logprobs.items():
            _check_top_logprobs(field, value, vocab_size)
    if getattr(getattr(manager, "server_args", None), "enable_custom_logit_processor", False):
        _check_processors(processors)


def _check_not_empty(field: str, value: Any) -> None:
    items = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    for i, item in enumerate(items):
        if item == "" or item == []:
            name = field if items is not value else f"{field}[{i}]"
            raise RequestError(f"{name} is empty: every prompt needs at least one token", field)


def _check_token_ids(field: str, value: Any, vocab_size: int) -> None:
    bad = _first_out_of_range(value, vocab_size)
    if bad is not None:
        raise RequestError(f"{field} contains token id {bad} outside the vocabulary [0, {vocab_size})", field)


def _check_top_logprobs(field: str, value: Any, vocab_size: int) -> None:
    counts = value if isinstance(value, list) else [value]  # /generate takes one per prompt
    for k in counts:
        if isinstance(k, int) and not isinstance(k, bool) and k > vocab_size:
            raise RequestError(f"{field} must be at most the vocabulary size ({vocab_size}), got {k}", field)


def _first_out_of_range(value: Any, vocab_size: int) -> int | None:
    if not isinstance(value, list):
        return None  # text prompts, and shapes SGLang's own validation rejects
    for item in value:
        if isinstance(item, list):
            bad = _first_out_of_range(item, vocab_size)
            if bad is not None:
                return bad
        elif isinstance(item, int) and not isinstance(item, bool) and not 0 <= item < vocab_size:
            return item
    return None


def _check_processors(value: Any) -> None:
    # NOTE: only reached when the operator enabled custom logit processors, i.e. chose to
    # run clients' serialized code; loading it here, not in the scheduler, changes nothing
    # about that trust, and a broken one becomes a 400 instead of a dead server.
    for item in value if isinstance(value, list) else [value]:
        if item is not None and not _loads(item):
            raise RequestError(
                f"{PROCESSOR_FIELD} is not a serialized CustomLogitProcessor (see CustomLogitProcessor.to_str())",
                PROCESSOR_FIELD,
            )


def _loads(serialized: Any) -> bool:
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    if not isinstance(serialized, str):
        return True  # SGLang's request validation rejects the type itself
    try:
        return isinstance(CustomLogitProcessor.from_str(serialized), CustomLogitProcessor)
    except Exception:  # anything deserialization raises: orjson, hex, dill, the constructor
        return False
