"""Reading a flattened reply: segments, and the reasoning / content split.

The flattened (serial) form of a reply (DESIGN.md section 3 "Output text") is::

  prefix | block open .. fork point | header 1 + text + close | header 2 .. | join | continuation

:func:`segment` cuts it into a tree of :class:`Segment`. Segments tile the text
exactly: text between pieces of a block (a newline between ``</path>`` and the next
header, say) belongs to the segment before it. A branch that opens a nested block
lists its parts as ``children`` (themselves tiling the branch); other branches have
none. A piece whose closing tag never comes (an unfinished reply) runs to the end of
the text. Branch headers are found by the schema's header with any index, exactly as
the engine injects them.

:func:`split_reasoning` and :class:`ReasoningSplitter` apply DESIGN.md section 6: with
``summary_in_content`` (``parallel``) each block from its open tag up to its join header
is reasoning; otherwise (``npr``, ``multiverse``) whole blocks are. All other text is
content. NOTE: text between the last branch close and the join header counts as
reasoning, so the streaming splitter never holds back more than a partial tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from npr_engine.grammar.parser import ParserState, TagParser
from npr_engine.grammar.schemas import TagSchema, get_schema

SEGMENT_KINDS = ("outside", "block_open_to_fork", "branch", "join", "block_close")


@dataclass(frozen=True)
class Segment:
    """A slice ``text == full_text[start:end]`` of a flattened reply.

    ``depth`` counts the blocks around the text: 0 for top-level text outside blocks,
    1 for the parts of a top-level block, 2 for a block nested in one of its branches.
    ``path`` is the 1-based branch index (branches only).
    """

    kind: str
    start: int
    end: int
    text: str
    depth: int
    path: int | None = None
    children: tuple[Segment, ...] = ()


def _alternation(*tags: str) -> re.Pattern[str]:
    # Longest first, so a tag that is a prefix of another cannot shadow it.
    return re.compile("|".join(re.escape(t) for t in sorted(set(tags), key=len, reverse=True)))


class _Segmenter:
    """Recursive descent over the full text; each level searches only for its own tags."""

    def __init__(self, text: str, schema: TagSchema) -> None:
        self.text, self.schema = text, schema
        self._outer = _alternation(schema.block_open)
        self._in_branch = _alternation(schema.block_open, schema.branch_close)
        # Ids as the engine writes them: the index, or a plan's (dotted) id.
        header = re.escape(schema.header_prefix) + r"(\d+(?:\.\d+)*)" + re.escape(schema.header_suffix)
        self._piece = re.compile(f"(?P<join>{re.escape(schema.join_header)})|{header}")

    def seg(self, kind: str, start: int, end: int, depth: int, path: int | None = None,
            children: tuple[Segment, ...] = ()) -> Segment:
        return Segment(kind, start, end, self.text[start:end], depth, path, children)

    def extend(self, seg: Segment, end: int) -> Segment:
        kids = seg.children[:-1] + (self.extend(seg.children[-1], end),) if seg.children else ()
        return replace(seg, end=end, text=self.text[seg.start:end], children=kids)

    def sequence(self, pos: int, depth: int, in_branch: bool) -> tuple[list[Segment], int]:
        """Text outside blocks from ``pos``; in a branch it stops after the branch close."""
        pattern = self._in_branch if in_branch else self._outer
        segs: list[Segment] = []
        start = pos
        while (found := pattern.search(self.text, pos)) is not None:
            if found.group() != self.schema.block_open:
                pos = found.end()  # the branch's own close tag ends the sequence
                break
            if found.start() > start:
                segs.append(self.seg("outside", start, found.start(), depth))
            block, pos = self.block(found.start(), depth + 1)
            segs += block
            start = pos
        else:
            pos = len(self.text)
        if pos > start:
            segs.append(self.seg("outside", start, pos, depth))
        return segs, pos

    def block(self, start: int, depth: int) -> tuple[list[Segment], int]:
        fork_end = start + len(self.schema.block_open)
        if self.schema.fork_after != self.schema.block_open:
            fork_end = self._find_end(self.schema.fork_after, fork_end)
        segs = [self.seg("block_open_to_fork", start, fork_end, depth)]
        pos = fork_end
        while pos < len(self.text):
            found = self._piece.search(self.text, pos)
            if found is None:
                break
            if found.start() > pos:  # text between pieces joins the piece before it
                segs[-1] = self.extend(segs[-1], found.start())
            if found.group("join") is not None:
                return self._join(segs, found.start(), depth)
            index = sum(seg.kind == "branch" for seg in segs) + 1
            segs.append(self.branch(found.start(), index, depth))
            pos = segs[-1].end
        segs[-1] = self.extend(segs[-1], len(self.text))
        return segs, len(self.text)

    def branch(self, start: int, index: int, depth: int) -> Segment:
        parts, end = self.sequence(start, depth, in_branch=True)
        nested = any(p.kind != "outside" for p in parts)
        return self.seg("branch", start, end, depth, path=index,
                        children=tuple(parts) if nested else ())

    def _join(self, segs: list[Segment], start: int, depth: int) -> tuple[list[Segment], int]:
        close_end = self._find_end(self.schema.join_close, start + len(self.schema.join_header))
        segs.append(self.seg("join", start, close_end, depth))
        if self.schema.block_close is not None and close_end < len(self.text):
            end = self._find_end(self.schema.block_close, close_end)
            segs.append(self.seg("block_close", close_end, end, depth))
            close_end = end
        return segs, close_end

    def _find_end(self, tag: str, pos: int) -> int:
        """End of the next ``tag`` at or after ``pos``; the text end if there is none."""
        at = self.text.find(tag, pos)
        return len(self.text) if at < 0 else at + len(tag)


def segment(text: str, schema: TagSchema | str | None = None) -> list[Segment]:
    """Top-level segments of a flattened reply (a tree through ``children``)."""
    segs, _ = _Segmenter(text, get_schema(schema)).sequence(0, 0, in_branch=False)
    return segs


_PATH_STATES = frozenset({ParserState.OPEN, ParserState.PLAN, ParserState.FORKED})
_BLOCK_STATES = _PATH_STATES | {ParserState.SUMMARY, ParserState.AFTER_SUMMARY}


class ReasoningSplitter:
    """Streaming reasoning / content split of a flattened reply.

    ``feed(delta) -> (reasoning_delta, content_delta)``. Trailing text that may still
    be the start of a tag is held back until a later feed (or :meth:`finish`) decides.
    """

    def __init__(self, schema: TagSchema | str | None = None) -> None:
        self.schema = get_schema(schema)
        self._parser = TagParser(self.schema, "root")
        paths_only = self.schema.summary_in_content
        self._reasoning_states = _PATH_STATES if paths_only else _BLOCK_STATES
        # NOTE: a tag that opens a region belongs to it (the state after the tag); any
        # other tag belongs to the region it ends (the state before it).
        self._openers = frozenset({self.schema.block_open, self.schema.join_header})
        self._buf = ""  # fed text not yet released
        self._buf_start = 0  # offset of _buf[0] in the fed text

    def feed(self, delta: str) -> tuple[str, str]:
        return _by_channel(self.feed_pieces(delta))

    def finish(self) -> tuple[str, str]:
        """Release the held-back tail at end of stream."""
        return _by_channel(self.finish_pieces())

    def feed_pieces(self, delta: str) -> list[tuple[str, bool]]:
        """Released text in order, as (text, is_reasoning) runs."""
        hits = self._parser.feed_tags(delta)
        self._buf += delta
        out: list[tuple[str, bool]] = []
        cut = 0
        for hit in hits:
            cut = self._release(out, cut, hit.start, hit.before)
            cut = self._release(out, cut, hit.end, hit.after if hit.tag in self._openers else hit.before)
        safe = self._parser.offset - self._parser.pending
        cut = self._release(out, cut, safe, self._parser.state)
        self._buf, self._buf_start = self._buf[cut:], self._buf_start + cut
        return out

    def finish_pieces(self) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        self._release(out, 0, self._parser.offset, self._parser.state)
        self._buf_start += len(self._buf)
        self._buf = ""
        return out

    def _release(self, out: list[tuple[str, bool]], cut: int, upto: int, state: ParserState) -> int:
        """Move _buf[cut:] up to offset ``upto`` into ``out``; returns the new cut."""
        new_cut = upto - self._buf_start
        if new_cut <= cut:
            return cut
        text, reasoning = self._buf[cut:new_cut], state in self._reasoning_states
        if out and out[-1][1] == reasoning:
            out[-1] = (out[-1][0] + text, reasoning)
        else:
            out.append((text, reasoning))
        return new_cut


def _by_channel(pieces: list[tuple[str, bool]]) -> tuple[str, str]:
    reasoning = "".join(text for text, is_reasoning in pieces if is_reasoning)
    content = "".join(text for text, is_reasoning in pieces if not is_reasoning)
    return reasoning, content


def split_reasoning(text: str, schema: TagSchema | str | None = None) -> tuple[str, str]:
    """(reasoning, content) of a whole flattened reply; same as streaming it."""
    splitter = ReasoningSplitter(schema)
    reasoning, content = splitter.feed(text)
    tail_reasoning, tail_content = splitter.finish()
    return reasoning + tail_reasoning, content + tail_content
