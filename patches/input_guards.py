"""Hook: `sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request`
(BEFORE), SGLang 0.5.23.

Every generation request passes here, the offline `sglang.Engine`'s included: inputs
that would kill the scheduler (npr_engine.api.guards: empty prompts in a batch, token
ids outside the vocabulary, top-log-prob counts above it, custom logit processors that
do not deserialize) raise RequestError, a ValueError, to the caller. HTTP requests were
already refused with an OpenAI-shaped 400 by the middleware.
"""

from __future__ import annotations

from npr_engine.api.guards import check_generate_input
from npr_engine.hooks import Hook, Kind


def refuse_crashing_inputs(manager, obj, *args, **kwargs):
    check_generate_input(manager, obj)


HOOKS = [
    Hook("sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request", Kind.BEFORE,
         refuse_crashing_inputs),
]
