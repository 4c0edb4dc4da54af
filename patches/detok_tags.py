"""Hook: `sglang.srt.managers.detokenizer_manager.DetokenizerManager.init_tokenizer`
(AFTER), SGLang 0.5.23.

The detokenizer turns every reply's ids into its text (chat, completions, `/generate`,
streaming, the offline Engine). With SGLang's default `skip_special_tokens=True` it
would drop tags that are special tokens (NPR's and Multiverse's): the tokenizer is made
to strip only the other special tokens (npr_engine/core/special.py).
"""

from __future__ import annotations

from npr_engine.core.special import keep_tags
from npr_engine.hooks import Hook, Kind


def keep_tags_in_text(result, manager, *args, **kwargs):
    if manager.tokenizer is not None:
        manager.tokenizer = keep_tags(manager.tokenizer)
    return result


HOOKS = [
    Hook(
        "sglang.srt.managers.detokenizer_manager.DetokenizerManager.init_tokenizer",
        Kind.AFTER,
        keep_tags_in_text,
    )
]
