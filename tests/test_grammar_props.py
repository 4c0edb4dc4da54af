"""Property tests: feeding text in any split gives the events of feeding it whole."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from npr_engine.grammar import (
    MULTIVERSE,
    NPR,
    PARALLEL,
    ROLES,
    BlockClose,
    BlockOpen,
    BranchClose,
    Fork,
    JoinClose,
    Malformed,
    ParserState,
    ReasoningSplitter,
    Segment,
    TagParser,
    TagSchema,
    segment,
    split_reasoning,
)

SCHEMAS = (PARALLEL, NPR, MULTIVERSE)
NEAR_MISSES = ("<pathway>", "</pat", "<<path>", "<pa", "th>", "<", ">", "</", "<parallel",
               "</Path", "<Goal>", "<step>", "<summary", "\n", " ")
FAST = settings(max_examples=200, deadline=None)


def tokens(schema: TagSchema) -> list[str]:
    tags = list(schema.tags().values())
    prefixes = [tag[:k] for tag in tags for k in (1, len(tag) // 2, len(tag) - 1)]
    return tags + prefixes + [schema.header(1), schema.header(2)] + list(NEAR_MISSES)


@st.composite
def tag_soup(draw: st.DrawFn, schema: TagSchema) -> str:
    """Random text dense in tags, partial tags and near misses."""
    piece = st.one_of(st.sampled_from(tokens(schema)), st.text("ab<>/\nPpatl", max_size=4))
    return "".join(draw(st.lists(piece, max_size=25)))


@st.composite
def splits(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=8))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def run(schema: TagSchema, role: str, parts: list[list[str]]) -> tuple[list[object], ParserState]:
    """Feed each part's deltas; between parts, join a parked parser (as the engine does)."""
    parser = TagParser(schema, role)
    longest = max(len(t) for t in schema.tags().values())
    events: list[object] = []
    for deltas in parts:
        if parser.state is ParserState.FORKED:
            parser.on_join()
        for delta in deltas:
            events += parser.feed(delta)
            assert parser.pending <= longest - 1
    return events + parser.finish(), parser.state


@FAST
@given(st.data())
def test_parser_events_do_not_depend_on_splits(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(SCHEMAS))
    role = data.draw(st.sampled_from(ROLES))
    texts = data.draw(st.lists(tag_soup(schema), min_size=1, max_size=3))
    whole = run(schema, role, [[t] for t in texts])
    pieces = run(schema, role, [data.draw(splits(t)) for t in texts])
    assert pieces == whole
    offsets = [e.offset for e in whole[0]]
    assert offsets == sorted(offsets)


@FAST
@given(st.data())
def test_event_offsets_are_tag_ends(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(SCHEMAS))
    text = data.draw(tag_soup(schema))
    ends = {BlockOpen: schema.block_open, Fork: schema.fork_after,
            BranchClose: schema.branch_close, JoinClose: schema.join_close}
    for event in TagParser(schema, "branch").feed(text):
        tag = ends.get(type(event))
        if tag is not None:
            assert text[: event.offset].endswith(tag)
        elif isinstance(event, BlockClose):
            assert event.offset <= len(text)


@FAST
@given(st.data())
def test_splitter_matches_whole_text_split(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(SCHEMAS))
    text = data.draw(tag_soup(schema))
    splitter = ReasoningSplitter(schema)
    pieces = [p for delta in data.draw(splits(text)) for p in splitter.feed_pieces(delta)]
    pieces += splitter.finish_pieces()
    assert "".join(text for text, _ in pieces) == text  # every character, in order
    reasoning = "".join(t for t, is_reasoning in pieces if is_reasoning)
    content = "".join(t for t, is_reasoning in pieces if not is_reasoning)
    assert (reasoning, content) == split_reasoning(text, schema)


def assert_tiles(segs: list[Segment], text: str, start: int) -> None:
    """Segments cover ``text`` (which begins at offset ``start``) exactly, in order."""
    assert "".join(s.text for s in segs) == text
    pos = start
    for seg in segs:
        assert seg.start == pos and seg.end == pos + len(seg.text)
        pos = seg.end
        if seg.children:
            assert_tiles(list(seg.children), seg.text, seg.start)


@FAST
@given(st.data())
def test_segments_tile_any_text(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(SCHEMAS))
    text = data.draw(tag_soup(schema))
    assert_tiles(segment(text, schema), text, 0)


# -- well-formed flattened replies ----------------------------------------------------

PLAIN = st.text("abc xyz\n:1", max_size=6)


@st.composite
def block(draw: st.DrawFn, schema: TagSchema, depth: int) -> tuple[str, int]:
    """A well-formed flattened block and its plan item count."""
    items = draw(st.lists(PLAIN, max_size=3)) if schema.plan_open else []
    plan = "".join(f"{schema.plan_open}{item}{schema.plan_close}" for item in items)
    goal = "<Goal>" if schema is MULTIVERSE else ""
    fork = "" if schema.fork_after == schema.block_open else f"{goal}{plan}{schema.fork_after}"
    parts = [schema.block_open, fork]
    for i in range(1, draw(st.integers(1, 3)) + 1):
        body = draw(PLAIN)
        if depth < 2 and draw(st.booleans()):
            body += draw(block(schema, depth + 1))[0] + draw(PLAIN)
        parts.append(schema.header(i) + body + schema.branch_close + draw(st.sampled_from(["", "\n"])))
    parts += [schema.join_header, draw(PLAIN), schema.join_close, schema.block_close or ""]
    return "".join(parts), len(items)


@FAST
@given(st.data())
def test_well_formed_reply_agrees_everywhere(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(SCHEMAS))
    chunks, widths = [data.draw(PLAIN)], []
    for _ in range(data.draw(st.integers(0, 2))):
        text, width = data.draw(block(schema, 1))
        chunks += [text, data.draw(PLAIN)]
        widths.append(width)
    text = "".join(chunks)
    segs = segment(text, schema)
    assert_tiles(segs, text, 0)
    in_reasoning = ("block_open_to_fork", "branch") if schema.summary_in_content else (
        "block_open_to_fork", "branch", "join", "block_close")
    reasoning = "".join(s.text for s in segs if s.kind in in_reasoning)
    content = "".join(s.text for s in segs if s.kind not in in_reasoning)
    assert split_reasoning(text, schema) == (reasoning, content)
    events = TagParser(schema).feed(text)
    assert [len(e.plan_items) for e in events if isinstance(e, Fork)] == widths
    assert sum(isinstance(e, BlockClose) for e in events) == len(widths)
    assert not [e for e in events if isinstance(e, Malformed)]
