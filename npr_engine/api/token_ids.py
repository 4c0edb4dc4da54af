"""Token-id prompts are checked against the vocabulary before SGLang sees them.

SGLang 0.5.23 checks `token_ids_logprob` but not the prompt ids themselves: one id
outside [0, vocab_size) reaches the embedding lookup in the scheduler, whose
IndexError takes the whole server down (found by the schemathesis run, issue 5).
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


def served_vocab_size() -> int | None:
    """The served model's vocabulary size, once SGLang's HTTP server holds its state."""
    from sglang.srt.entrypoints import http_server

    state = getattr(http_server, "_global_state", None)
    config = getattr(getattr(state, "tokenizer_manager", None), "model_config", None)
    return getattr(config, "vocab_size", None)


def check_token_ids(path: str, body: dict, vocab_size: int | None) -> None:
    """Raise RequestError naming the field if a token-id prompt holds an id outside the vocabulary."""
    if not vocab_size:
        return
    for field in TOKEN_ID_FIELDS.get(path, ()):
        bad = _first_out_of_range(body.get(field), vocab_size)
        if bad is not None:
            raise RequestError(f"{field} contains token id {bad} outside the vocabulary [0, {vocab_size})", field)


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
