"""Incremental detokenization of one sequence, as the tag parser needs it.

Token-by-token `decode([id])` breaks multi-byte characters and merged-space tokens.
Like the serving detokenizers, we decode a short window of recent ids and release only
the text that is stable (no trailing replacement character). The window's start moves
only every `_WINDOW` ids, so most pushes reuse the last push's text as their prefix
and decode once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_WINDOW = 6  # ids of context kept before the unreleased tail
DECODE_CONTEXT = _WINDOW  # ids before the new ones that `resume` needs


class IncrementalDecoder:
    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before here have been released as text
        self._last: tuple[int, int, str] = (0, 0, "")  # a window decoded last: start, end, text

    def push(self, token_ids: Sequence[int]) -> str:
        """Add ids; return the newly stable text (may be empty)."""
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
        if self._read - self._prefix >= 2 * _WINDOW:
            self._prefix = self._read - _WINDOW
            self._last = (0, 0, "")
        else:
            self._last = (self._prefix, len(self._ids), full_text)
        self._read = len(self._ids)
        return full_text[len(prefix_text) :]

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

    def resume(self, context: Sequence[int]) -> None:
        """Go on after ids that were never pushed: `context` are the last of them (up
        to DECODE_CONTEXT), decoded only as context for what is pushed next."""
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)
        self._last = (0, 0, "")

    def flush(self) -> str:
        """Release whatever is left, replacement characters included (end of stream)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._read = len(self._ids)
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
