"""Incremental detokenization of one sequence, as the tag parser needs it.

Token-by-token `decode([id])` breaks multi-byte characters and merged-space tokens.
Like the serving detokenizers, we decode a short window of recent ids and release only
the text that is stable (no trailing replacement character). The window's start moves
only every `_WINDOW` ids, so most pushes reuse the last push's text as their prefix
and decode once. With a tokenizer whose decoding is a concatenation (`concatenative`:
byte-level BPE, as Qwen's), a push onto settled text decodes the new ids alone, which
for one id or a short header is a remembered text (`RememberedTexts`), no decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_WINDOW = 6  # ids of context kept before the unreleased tail
DECODE_CONTEXT = _WINDOW  # ids before the new ones that `resume` needs


def concatenative(tokenizer) -> bool:
    """Whether `decode(a + b) == decode(a) + decode(b)` whenever `decode(a)` ends on a
    whole character: a fast tokenizer whose decoder maps each token to its bytes on its
    own (byte-level BPE) and joins them, with no clean-up of spaces afterwards."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return (backend is not None and type(backend.decoder).__name__ == "ByteLevel"
            and not getattr(tokenizer, "clean_up_tokenization_spaces", True))


class IncrementalDecoder:
    def __init__(self, decode: Callable[[Sequence[int]], str], concatenative: bool = False,
                 whole_ids: frozenset[int] = frozenset()):
        self._decode = decode
        self._concatenative = concatenative
        # Ids whose text never merges with their neighbours' bytes (special tokens of
        # ASCII text): where decoding concatenates, they decode alone after any ids.
        self._whole_ids = whole_ids
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before here have been released as text
        self._last: tuple[int, int, str] = (0, 0, "")  # a window decoded last: start, end, text
        self._whole = True  # the ids so far end on a whole character (known from their text)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add ids; return the newly stable text (may be empty)."""
        if (self._concatenative and self._read == len(self._ids)
                and (self._whole or self._whole_ids.issuperset(token_ids))):
            text = self._decode(token_ids)
            if text and not text.endswith("\ufffd"):  # whole characters: the window's text + it
                self._append_settled(token_ids, text)
                self._whole = True
                return text
        self._ids.extend(token_ids)
        start, end, text = self._last
        if start == self._prefix and end == self._read:
            prefix_text = text
        else:
            prefix_text = self._decode(self._ids[self._prefix : self._read]) if self._read > self._prefix else ""
        full_text = self._decode(self._ids[self._prefix :])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            self._last = (self._prefix, self._read, prefix_text)
            return ""
        self._whole = True
        if self._read - self._prefix >= 2 * _WINDOW:
            self._prefix = self._read - _WINDOW
            self._last = (0, 0, "")
        else:
            self._last = (self._prefix, len(self._ids), full_text)
        self._read = len(self._ids)
        return full_text[len(prefix_text) :]

    def _append_settled(self, token_ids: Sequence[int], text: str) -> None:
        start, end, last = self._last
        known = start == self._prefix and end == self._read
        self._ids.extend(token_ids)
        self._read = len(self._ids)
        if self._read - self._prefix >= 2 * _WINDOW:
            self._prefix = self._read - _WINDOW
            self._last = (0, 0, "")
        else:
            self._last = (self._prefix, self._read, last + text) if known else (0, 0, "")

    @property
    def settled(self) -> bool:
        """Every pushed id has been released as text."""
        return self._read == len(self._ids)

    def skip(self, token_ids: Sequence[int]) -> None:
        """Add ids whose text nobody will read; later pushes decode with them as context.
        Only when settled: unreleased text before them would be lost."""
        assert self.settled, "skip() would drop unreleased text"
        self._ids.extend(token_ids)
        self._read = len(self._ids)
        self._prefix = max(self._prefix, self._read - _WINDOW)
        self._whole = False  # (they may end inside a character)

    def resume(self, context: Sequence[int], whole: bool = False) -> None:
        """Go on after ids that were never pushed: `context` are the last of them (up
        to DECODE_CONTEXT), decoded only as context for what is pushed next. `whole`:
        they are known to end on a whole character (the encoding of a whole text)."""
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)
        self._last = (0, 0, "")
        self._whole = whole

    def flush(self) -> str:
        """Release whatever is left, replacement characters included (end of stream)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._read = len(self._ids)
        self._whole = False
        return full_text[len(prefix_text) :]


class RememberedTexts:
    """`decode`, with the text of short windows remembered: a branch header, a join
    header and what precedes it decode alike in every block."""

    def __init__(self, decode: Callable[[Sequence[int]], str], max_ids: int = 16, entries: int = 4096):
        self._decode, self._max_ids, self._entries = decode, max_ids, entries
        self._texts: dict[tuple[int, ...], str] = {}

    def __call__(self, ids: Sequence[int]) -> str:
        if len(ids) > self._max_ids:
            return self._decode(ids)
        key = tuple(ids)
        text = self._texts.get(key)
        if text is None:
            if len(self._texts) >= self._entries:
                self._texts.clear()
            text = self._texts[key] = self._decode(ids)
        return text
