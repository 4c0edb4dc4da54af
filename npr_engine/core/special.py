"""Tags that are special tokens survive detokenization; other special tokens do not.

NPR and Multiverse add their tags to the tokenizer as *additional special tokens*
(DESIGN.md section 2). SGLang decodes replies with ``skip_special_tokens=True`` by
default, which would drop every tag from the returned text while the engine still
forks on them. A request's ``skip_special_tokens`` is meant for EOS and chat markers:
here it strips exactly the special tokens that are not tags, and the rest is decoded
with ``skip_special_tokens=False`` (and ``spaces_between_special_tokens=False``, so a
slow tokenizer adds no space around a kept tag: the text stays as trained).

Tags kept: every special token found in a tag, branch header, forced open text or
``keep_tokens`` of a registered schema or of the server's ``--tag-schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

from npr_engine.config import env
from npr_engine.grammar.schemas import get_schema, known_schemas


def tag_texts() -> set[str]:
    texts: set[str] = set()
    for name in {*known_schemas(), env().tag_schema}:
        try:
            texts |= get_schema(name).special_texts()
        except (ValueError, OSError):
            continue  # a bad --tag-schema is reported by the launcher, not here
    return texts


class SpecialTokens:
    """Which special ids a tokenizer strips under ``skip_special_tokens``, tags aside."""

    def __init__(self, tokenizer, keep: set[str] | None = None) -> None:
        keep = tag_texts() if keep is None else keep
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special = {i: tok.content for i, tok in added.items() if getattr(tok, "special", False)}
        special.update({i: str(tokenizer.convert_ids_to_tokens(i)) for i in tokenizer.all_special_ids})
        self.kept = frozenset(i for i, text in special.items() if any(text in k for k in keep))
        self.stripped = frozenset(special) - self.kept
        # Their text is their own after any ids (decoding concatenates whole tokens' bytes).
        self.whole = frozenset(i for i, text in special.items() if text.isascii())

    def visible(self, ids: Sequence[int], skip_special_tokens: bool) -> list[int]:
        """The ids whose text a reply shows."""
        if not skip_special_tokens:
            return list(ids)
        return [t for t in ids if t not in self.stripped]


def keep_tags(tokenizer):
    """Make ``tokenizer`` (in place) keep tag tokens when asked to skip special tokens.

    NOTE: the instance gets a subclass of its own class (isinstance and every other
    attribute stay as they were); a tokenizer with no tag among its special tokens is
    returned untouched, so stock behaviour is unchanged for such models.
    """
    special = SpecialTokens(tokenizer)
    if not special.kept or getattr(tokenizer, "_npr_keeps_tags", False):
        return tokenizer
    base = type(tokenizer)

    def decode(self, token_ids, skip_special_tokens=False, **kwargs):
        if skip_special_tokens:
            token_ids = special.visible(_as_list(token_ids), True)
            kwargs["spaces_between_special_tokens"] = False
        return base.decode(self, token_ids, skip_special_tokens=False, **kwargs)

    def batch_decode(self, sequences, skip_special_tokens=False, **kwargs):
        return [decode(self, ids, skip_special_tokens, **kwargs) for ids in sequences]

    @property
    def all_special_ids(self):
        # SGLang's slow-tokenizer path filters these ids itself before decoding.
        return [i for i in base.all_special_ids.fget(self) if i not in special.kept]

    tokenizer.__class__ = type(f"TagKeeping{base.__name__}", (base,), {
        "decode": decode, "batch_decode": batch_decode, "all_special_ids": all_special_ids,
        "_npr_keeps_tags": True,
    })
    return tokenizer


def _as_list(token_ids) -> list[int]:
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    return list(token_ids)


def loud_ids(tokenizer, chars: frozenset[str]) -> frozenset[int] | None:
    """Ids whose text may hold one of `chars` (every tag's first character): the ids a
    sequence outside any tag must be decoded for. Special tokens are always in.

    A vocabulary entry's own spelling is screened, so this is exact only where a
    character is spelled as itself there: printable ASCII in byte-level BPE (GPT-2's
    byte map keeps it) and in SentencePiece (whose byte pieces ``<0x..>`` hold ``<``
    anyway, so they count as loud). Otherwise None: decode everything.
    """
    if not chars or not all(c.isascii() and c.isprintable() and not c.isspace() for c in chars):
        return None
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    loud = {i for i, piece in enumerate(pieces) if piece is None or any(c in piece for c in chars)}
    loud.update(tokenizer.all_special_ids)
    loud.update(getattr(tokenizer, "added_tokens_decoder", None) or {})
    return frozenset(loud)
