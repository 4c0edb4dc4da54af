"""Streaming exact multi-string matching for the tag parser."""

from __future__ import annotations

import re
from functools import lru_cache


class TagMatcher:
    """Streaming exact multi-string matcher (an Aho-Corasick automaton as a DFA).

    The automaton's node is the longest suffix of the fed text that is a prefix of
    some tag, so no text is ever rescanned and ``pending`` says how many trailing
    characters might still turn out to start a tag.
    """

    def __init__(self, tags: tuple[str, ...]) -> None:
        self._trans, self._out, self._hold = _build_automaton(tags)
        # NOTE: from the root only a tag's first character moves the automaton, so the
        # scan jumps there with a C-level regex search instead of a Python loop.
        self._first = _first_chars(tags)
        self._node = 0

    def clone(self) -> TagMatcher:
        """The same automaton (shared, read-only) at the same node."""
        other = object.__new__(TagMatcher)
        other.__dict__.update(self.__dict__)
        return other

    @property
    def pending(self) -> int:
        """Trailing characters that may still grow into a tag (< the longest tag)."""
        return self._hold[self._node]

    def scan(self, text: str, base: int) -> list[tuple[str, int]]:
        """Tags completed inside ``text`` as (tag, end offset); ``base`` = offset of text[0]."""
        hits: list[tuple[str, int]] = []
        trans, out, node, i, n = self._trans, self._out, self._node, 0, len(text)
        while i < n:
            if node == 0:
                found = self._first.search(text, i)
                if found is None:
                    break
                i = found.start()
            node = trans[node].get(text[i], 0)
            i += 1
            tag = out[node]
            if tag is not None:
                hits.append((tag, base + i))
        self._node = node
        return hits


@lru_cache(maxsize=64)
def _first_chars(tags: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(re.escape(c) for c in sorted({t[0] for t in tags})))


@lru_cache(maxsize=64)  # every sequence of a schema shares its (read-only) automaton
def _build_automaton(
    tags: tuple[str, ...],
) -> tuple[list[dict[str, int]], list[str | None], list[int]]:
    children: list[dict[str, int]] = [{}]
    out: list[str | None] = [None]
    depth = [0]
    for tag in tags:
        node = 0
        for ch in tag:
            if ch not in children[node]:
                children.append({})
                out.append(None)
                depth.append(depth[node] + 1)
                children[node][ch] = len(children) - 1
            node = children[node][ch]
        out[node] = tag
    trans: list[dict[str, int]] = [dict(children[0]) for _ in children]
    fail = [0] * len(children)
    queue = list(children[0].values())
    hold = [0] * len(children)
    for node in queue:  # breadth-first: a node's fail target is already complete
        trans[node] = {**trans[fail[node]], **children[node]}
        if out[node] is None:  # longest tag ending here: own tag, else the fail chain's
            out[node] = out[fail[node]]
        # A complete tag that cannot grow holds back only what may start the next one.
        hold[node] = depth[node] if children[node] else hold[fail[node]]
        for ch, child in children[node].items():
            fail[child] = trans[fail[node]].get(ch, 0) if node else 0
            queue.append(child)
    return trans, out, hold
