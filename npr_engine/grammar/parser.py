"""Incremental tag parser: one per decoding sequence, fed decoded text deltas.

Every event carries ``offset``: the position just past the END of the tag that fired
it, counted in characters over all text fed to this parser (0 = before the first fed
character). Matching is exact on decoded text across delta boundaries (``<pa`` then
``th>`` fires once; ``<pathway>`` and ``</pat`` never fire); where two tags end at the
same character the longest wins. Per feed the work is O(len(delta)); the only carry-over
is the matcher's partial match (at most the longest tag minus one character).

States (``parser.state``) and what each tag does::

  OUTSIDE   block_open -> BlockOpen, OPEN (and Fork at once if fork_after == block_open)
            branch_close -> BranchClose, CLOSED (role "branch" only)
  OPEN      plan_open -> PLAN;  fork_after -> Fork(plan_items), FORKED
  PLAN      plan_close -> item "text between the tags".strip(), back to OPEN
  FORKED    the owner parks the sequence; ``on_join()`` -> SUMMARY
  SUMMARY   join_close -> JoinClose, then AFTER_SUMMARY (or, if block_close is None,
            BlockClose at the same offset and OUTSIDE); the injected join header is
            fed here too and fires nothing
  AFTER_SUMMARY  block_close -> BlockClose, OUTSIDE
  CLOSED    (branch closed) everything is ignored

Roles: "root" (a request's main sequence), "branch" (a branch's own text: root-like
plus its close tag; it may open a nested block), "join" (root-like, but starts in
SUMMARY, for a sequence that begins at a join header).

Text fed while FORKED is a block decoded sequentially (the engine's fallback, or a
flattened reply read back): paths (found by the header's text before the index) and
nested blocks are tracked (grammar/sequential.py), and the block's own join header,
written between paths, moves to SUMMARY; nothing else fires there. A join header
inside a path is path text, as in a real branch.

Malformed input never raises; ``Malformed(kind, offset)`` is emitted and parsing goes on:

  stray_<kind>             a tag with no meaning in the state, dropped: branch_close in
                           a root, join_header / join_close / block_close outside a
                           summary, plan_close with no open item, fork_after outside a
                           block
  join_in_branch           join_header / join_close in a branch's own text outside its
                           own nested summary; dropped
  plan_outside_block       plan tag at the top level of a root; dropped
  plan_after_fork          plan tag after the fork point (summary, after it, or a
                           branch's own text); dropped
  nested_open_before_fork  block_open while in a block before its fork; dropped
  unclosed_plan            another tag inside a plan item: the item ends before that
                           tag, then the tag is handled as in OPEN
  close_before_fork        block_close before the fork: BlockClose, OUTSIDE
  missing_join_close       block_close in a summary: BlockClose (no JoinClose), OUTSIDE
  missing_block_close      block_open (or a branch's close) after a summary: BlockClose,
                           then the tag is handled as in OUTSIDE
  open_in_summary          block_open inside a summary; dropped
  unclosed_block           a branch's close tag inside its own unfinished nested block
                           (BlockClose, then BranchClose), or ``finish()`` inside a block

So every BlockOpen is matched by exactly one BlockClose, or by ``unclosed_block`` from
``finish()``; JoinClose fires only for a join close tag actually written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from npr_engine.grammar.matcher import TagMatcher
from npr_engine.grammar.schemas import BySchema, TagSchema
from npr_engine.grammar.sequential import SequentialBlocks

ROLES = ("root", "branch", "join")
# Priority when one tag has two kinds (only block_open == fork_after is allowed).
_KIND_ORDER = ("block_open", "fork_after", "plan_open", "plan_close", "branch_close",
               "join_header", "join_close", "block_close", "branch_open")
# The header's text before the index: it marks a path in sequential text (FORKED) and
# means nothing anywhere else.
_BRANCH_OPEN = frozenset({"branch_open"})
_JOIN_KINDS = ("join_header", "join_close")
_PLAN_KINDS = ("plan_open", "plan_close")


@dataclass(frozen=True)
class BlockOpen:
    offset: int


@dataclass(frozen=True)
class Fork:
    plan_items: tuple[str, ...]
    offset: int


@dataclass(frozen=True)
class BranchClose:
    offset: int


@dataclass(frozen=True)
class JoinClose:
    offset: int


@dataclass(frozen=True)
class BlockClose:
    offset: int


@dataclass(frozen=True)
class Malformed:
    kind: str
    offset: int


Event = BlockOpen | Fork | BranchClose | JoinClose | BlockClose | Malformed


class ParserState(str, Enum):
    OUTSIDE = "outside"
    OPEN = "open"
    PLAN = "plan"
    FORKED = "forked"
    SUMMARY = "summary"
    AFTER_SUMMARY = "after_summary"
    CLOSED = "closed"


@dataclass(frozen=True)
class TagHit:
    """One matched tag: where it lies, the parser state around it, what it fired."""

    tag: str
    start: int
    end: int
    before: ParserState
    after: ParserState
    events: tuple[Event, ...]


_KINDS = BySchema(64)  # schema -> (its tag kinds, their tags)
# A new parser's first feed: the same few texts every request or branch of a schema starts
# with (a forced block open, a branch header, a join header), read once.
# (schema, role, text) -> (a parser that read it, its hits)
_FIRST_FEEDS = BySchema(1024)
_FIRST_FEED_MAX = 256  # characters


@lru_cache(maxsize=64)
def _tag_kinds(schema: TagSchema) -> dict[str, frozenset[str]]:
    kinds: dict[str, set[str]] = {}
    for kind, tag in schema.tags().items():
        kinds.setdefault(tag, set()).add(kind)
    if schema.header_prefix and schema.header_prefix not in kinds:
        kinds[schema.header_prefix] = {"branch_open"}
    return {tag: frozenset(k) for tag, k in kinds.items()}


def _primary(kinds: frozenset[str]) -> str:
    return next(k for k in _KIND_ORDER if k in kinds)


class TagParser:
    """Incremental parser for one sequence; see the module docstring for semantics."""

    def __init__(self, schema: TagSchema, role: str = "root") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.schema, self.role = schema, role
        self._kinds, tags = _KINDS.get(schema, (), lambda: (_tag_kinds(schema), tuple(_tag_kinds(schema))))
        self._matcher = TagMatcher(tags)
        self.state = ParserState.SUMMARY if role == "join" else ParserState.OUTSIDE
        self._fed = 0
        self._events: list[Event] = []
        self._items: list[str] = []
        self._plan_parts: list[str] = []
        self._plan_start = 0
        self._ctx = ("", 0)
        self._seq: SequentialBlocks | None = None  # a forked block's (set at the fork)

    def clone(self) -> TagParser:
        """An independent parser in this one's state (read-only tables shared)."""
        other = object.__new__(TagParser)
        other.__dict__.update(self.__dict__)
        other._matcher = self._matcher.clone()
        other._events, other._items, other._plan_parts = list(self._events), list(self._items), list(self._plan_parts)
        if self._seq is not None:
            other._seq = self._seq.clone()
        return other

    @property
    def offset(self) -> int:
        """Characters fed so far."""
        return self._fed

    @property
    def pending(self) -> int:
        """Trailing fed characters that may still be the start of a tag."""
        return 0 if self.state is ParserState.CLOSED else self._matcher.pending

    def feed(self, delta: str) -> list[Event]:
        """Feed decoded text; returns the events of the tags it completed, in order."""
        return [event for hit in self.feed_tags(delta) for event in hit.events]

    @classmethod
    def fresh(cls, schema: TagSchema, role: str = "root", text: str = "") -> TagParser:
        """A new parser that has read `text` as its first feed (a branch's header)."""
        return _first_feed(schema, role, text)[0].clone()

    def feed_tags(self, delta: str) -> list[TagHit]:
        """Like :meth:`feed`, but one entry per matched tag with the states around it."""
        if self._fed or not delta or len(delta) > _FIRST_FEED_MAX:
            return self._feed_tags(delta)
        parser, hits = _first_feed(self.schema, self.role, delta)
        self.__dict__.update(parser.clone().__dict__)
        return list(hits)

    def _feed_tags(self, delta: str) -> list[TagHit]:
        base = self._fed
        self._fed += len(delta)
        if self.state is ParserState.CLOSED:
            return []
        self._ctx = (delta, base)
        hits: list[TagHit] = []
        for tag, end in self._matcher.scan(delta, base):
            if self.state is ParserState.CLOSED:
                break
            before, self._events = self.state, []
            kinds = self._kinds[tag]
            if before is ParserState.FORKED or kinds != _BRANCH_OPEN:
                _HANDLERS[before](self, kinds, tag, end)
            hits.append(TagHit(tag, end - len(tag), end, before, self.state, tuple(self._events)))
        if self.state is ParserState.FORKED and self._fed > self._seq.start:
            self._seq.fed = True
        if self.state is ParserState.PLAN:
            self._plan_parts.append(delta[max(self._plan_start - base, 0):])
        return hits

    def on_join(self) -> None:
        """The engine joined this parked sequence: what follows is its join text."""
        if self.state is not ParserState.FORKED:
            raise RuntimeError(f"on_join() needs state FORKED, parser is {self.state.value}")
        self.state = ParserState.SUMMARY

    def finish(self) -> list[Event]:
        """End of stream: reports a block left open (state is left as it is)."""
        open_states = (ParserState.OUTSIDE, ParserState.CLOSED)
        return [] if self.state in open_states else [Malformed("unclosed_block", self._fed)]

    def closing_text(self) -> str:
        """Tags that would close a summary, or a block decoded sequentially, cut short
        (EOS, max_tokens, a branch's budget); "" otherwise (outside blocks, before a
        fork point, or a real fork whose parent is parked)."""
        if self.state is ParserState.FORKED:
            return self._seq.closing_text()
        if self.state is ParserState.SUMMARY:
            return self.schema.join_close + (self.schema.block_close or "")
        if self.state is ParserState.AFTER_SUMMARY:
            return self.schema.block_close or ""
        return ""

    # -- state handlers: (kinds of the matched tag, the tag, its end offset) --------

    def _outside(self, kinds: frozenset[str], tag: str, end: int) -> None:
        if "block_open" in kinds:
            self._events.append(BlockOpen(end))
            self._items, self.state = [], ParserState.OPEN
            if "fork_after" in kinds:
                self._fork(end)
        elif self._closes_branch(kinds):
            self._events.append(BranchClose(end))
            self.state = ParserState.CLOSED
        else:
            self._stray(kinds, end)

    def _open(self, kinds: frozenset[str], tag: str, end: int) -> None:
        if "fork_after" in kinds:
            self._fork(end)
        elif "plan_open" in kinds:
            self.state, self._plan_start, self._plan_parts = ParserState.PLAN, end, []
        elif "block_open" in kinds:
            self._malformed("nested_open_before_fork", end)
        elif "block_close" in kinds:
            self._malformed("close_before_fork", end)
            self._close_block(end)
        elif self._closes_branch(kinds):
            self._abandon_block(end)
        else:
            self._stray(kinds, end)

    def _plan(self, kinds: frozenset[str], tag: str, end: int) -> None:
        delta, base = self._ctx
        text = "".join(self._plan_parts) + delta[max(self._plan_start - base, 0):end - base]
        self._items.append(text[: max(len(text) - len(tag), 0)].strip())
        self.state = ParserState.OPEN
        if "plan_close" not in kinds:
            self._malformed("unclosed_plan", end)
            self._open(kinds, tag, end)

    def _forked(self, kinds: frozenset[str], tag: str, end: int) -> None:
        # Sequential text of a forked block: track paths and nesting to find its own join header.
        if self._seq.on_tag(kinds):
            self.state = ParserState.SUMMARY

    def _summary(self, kinds: frozenset[str], tag: str, end: int) -> None:
        if "join_close" in kinds:
            self._events.append(JoinClose(end))
            if self.schema.block_close is None:
                self._close_block(end)
            else:
                self.state = ParserState.AFTER_SUMMARY
        elif "join_header" in kinds:
            pass  # the header the engine injected after on_join()
        elif "block_close" in kinds:
            self._malformed("missing_join_close", end)
            self._close_block(end)
        elif "block_open" in kinds:
            self._malformed("open_in_summary", end)
        elif self._closes_branch(kinds):
            self._abandon_block(end)
        else:
            self._stray(kinds, end)

    def _after_summary(self, kinds: frozenset[str], tag: str, end: int) -> None:
        if "block_close" in kinds:
            self._close_block(end)
            return
        if "block_open" in kinds or self._closes_branch(kinds):
            self._malformed("missing_block_close", end)
            self._close_block(end)
        self._outside(kinds, tag, end)

    # -- helpers ------------------------------------------------------------------

    def _fork(self, end: int) -> None:
        self._events.append(Fork(tuple(self._items), end))
        self._items, self._seq, self.state = [], SequentialBlocks(self.schema, end), ParserState.FORKED

    def _close_block(self, end: int) -> None:
        self._events.append(BlockClose(end))
        self.state = ParserState.OUTSIDE

    def _abandon_block(self, end: int) -> None:
        """A branch closes while its own nested block is unfinished."""
        self._malformed("unclosed_block", end)
        self._close_block(end)
        self._events.append(BranchClose(end))
        self.state = ParserState.CLOSED

    def _closes_branch(self, kinds: frozenset[str]) -> bool:
        return self.role == "branch" and "branch_close" in kinds

    def _malformed(self, kind: str, end: int) -> None:
        self._events.append(Malformed(kind, end))

    def _stray(self, kinds: frozenset[str], end: int) -> None:
        kind = _primary(kinds)
        if kind in _JOIN_KINDS and self.role == "branch":
            name = "join_in_branch"
        elif kind in _PLAN_KINDS and self.state is not ParserState.OPEN:
            top_level = self.state is ParserState.OUTSIDE and self.role != "branch"
            name = "plan_outside_block" if top_level else "plan_after_fork"
        else:
            name = f"stray_{kind}"
        self._malformed(name, end)


# The parser's state handlers: (parser, kinds of the matched tag, the tag, its end offset).
def _first_feed(schema: TagSchema, role: str, text: str) -> tuple:
    """(a new parser that read `text`, its hits), read once per schema, role and text."""
    def read() -> tuple:
        parser = TagParser(schema, role)
        return parser, tuple(parser._feed_tags(text))

    return _FIRST_FEEDS.get(schema, (role, text), read)


_HANDLERS: dict[ParserState, Callable[[TagParser, frozenset[str], str, int], None]] = {
    ParserState.OUTSIDE: TagParser._outside,
    ParserState.OPEN: TagParser._open,
    ParserState.PLAN: TagParser._plan,
    ParserState.FORKED: TagParser._forked,
    ParserState.SUMMARY: TagParser._summary,
    ParserState.AFTER_SUMMARY: TagParser._after_summary,
}
