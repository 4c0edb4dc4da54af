"""Unit tests for npr_engine.grammar: schemas, TagParser, segment, reasoning split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from npr_engine.core.options import InvalidNprOptions, NprOptions
from npr_engine.grammar import (
    MULTIVERSE,
    NPR,
    PARALLEL,
    BlockClose,
    BlockOpen,
    BranchClose,
    Fork,
    JoinClose,
    Malformed,
    ParserState,
    ReasoningSplitter,
    TagParser,
    TagSchema,
    UnknownSchemaError,
    get_schema,
    known_schemas,
    register_schema,
    segment,
    split_reasoning,
)

S = ParserState


def feed_all(parser: TagParser, *deltas: str) -> list[object]:
    return [event for delta in deltas for event in parser.feed(delta)]


def kinds(events: list[object]) -> list[str]:
    return [e.kind for e in events if isinstance(e, Malformed)]


# -- schemas -------------------------------------------------------------------------


def test_presets_exact() -> None:
    assert PARALLEL.header(3) == "<path>3: "
    assert NPR.header(1) == "<step>\n1:"
    assert MULTIVERSE.header(12) == "<Path>\n12:"
    assert (PARALLEL.block_open, PARALLEL.fork_after, PARALLEL.block_close) == (
        "<parallel>", "<parallel>", "</parallel>")
    assert (NPR.fork_after, NPR.plan_open, NPR.plan_close, NPR.block_close) == (
        "</guideline>", "<plan>", "</plan>", None)
    assert (MULTIVERSE.fork_after, MULTIVERSE.plan_open, MULTIVERSE.join_header) == (
        "</Goal>", "<Outline>", "<Conclusion>")
    assert PARALLEL.summary_in_content and not NPR.summary_in_content
    assert known_schemas()[:3] == ["parallel", "npr", "multiverse"]
    assert get_schema() is PARALLEL and get_schema("npr") is NPR


def test_unknown_schema_names_known_ones() -> None:
    with pytest.raises(UnknownSchemaError) as info:
        get_schema("nope")
    assert isinstance(info.value, ValueError)
    assert "parallel" in str(info.value) and "multiverse" in str(info.value)


def test_schema_from_json_file(tmp_path: Path) -> None:
    data = NPR.to_dict() | {"name": "mine", "join_header": "<wrap>"}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    schema = get_schema(str(path))
    assert schema.join_header == "<wrap>" and schema.name == "mine"
    del data["name"], data["block_close"]  # name from the file stem, optional tag omitted
    path.write_text(json.dumps(data))
    assert get_schema(path).name == "mine" and get_schema(path).block_close is None
    path.write_text(json.dumps(data | {"colour": "red"}))
    with pytest.raises(ValueError, match="colour"):
        get_schema(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        get_schema(path)


def test_to_dict_round_trip() -> None:
    for schema in (PARALLEL, NPR, MULTIVERSE):
        assert TagSchema(**schema.to_dict()) == schema
        assert TagSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


@pytest.mark.parametrize("change, message", [
    ({"block_open": ""}, "non-empty"),
    ({"join_close": None}, "non-empty"),
    ({"branch_header": "<path>"}, "{i}"),
    ({"plan_close": None}, "both"),
    ({"join_close": "</step>"}, "both"),
    ({"fork_after": "<guideline>"}, "fork point"),
    ({"name": ""}, "name"),
])
def test_schema_validation(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TagSchema(**(NPR.to_dict() | change))


def test_header_keeps_braces() -> None:
    schema = TagSchema(**(PARALLEL.to_dict() | {"name": "b", "branch_header": "{{x}} {i}:"}))
    assert schema.header(2) == "{{x}} 2:"


def test_register_schema() -> None:
    schema = TagSchema(**(PARALLEL.to_dict() | {"name": "test-reg", "join_header": "<sum>"}))
    assert register_schema(schema) is schema
    assert register_schema(schema) is schema  # same schema again: no-op
    assert get_schema("test-reg") is schema and "test-reg" in known_schemas()
    other = TagSchema(**(schema.to_dict() | {"join_header": "<s>"}))
    with pytest.raises(ValueError, match="already registered"):
        register_schema(other)
    register_schema(other, replace=True)
    assert get_schema("test-reg") is other


# -- parser: the happy paths ------------------------------------------------------------


def test_parallel_root_lifecycle() -> None:
    p = TagParser(PARALLEL)
    assert p.feed("Hi <parallel>") == [BlockOpen(13), Fork((), 13)]
    assert p.state is S.FORKED
    p.on_join()
    assert p.feed("<summary>merged") == []  # the injected join header fires nothing
    assert p.feed("</summary>\n") == [JoinClose(38)]
    assert p.state is S.AFTER_SUMMARY and p.closing_text() == "</parallel>"
    assert p.feed("</parallel> done") == [BlockClose(50)]
    assert p.state is S.OUTSIDE and p.finish() == []


def test_npr_plan_items_and_takeaway_ends_block() -> None:
    p = TagParser(NPR)
    text = "Q<guideline><plan>1: do X</plan>\n<plan> 2: do Y </plan></guideline>"
    events = p.feed(text)
    assert events == [BlockOpen(12), Fork(("1: do X", "2: do Y"), len(text))]
    p.on_join()
    assert p.closing_text() == "</takeaway>"
    out = p.feed("<takeaway>T</takeaway>")
    end = len(text) + len("<takeaway>T</takeaway>")
    assert out == [JoinClose(end), BlockClose(end)] and p.state is S.OUTSIDE


def test_multiverse_outline_inside_goal() -> None:
    p = TagParser(MULTIVERSE)
    text = "<Parallel><Goal><Outline>1: a</Outline><Outline>2: b</Outline></Goal>"
    assert p.feed(text) == [BlockOpen(10), Fork(("1: a", "2: b"), len(text))]
    p.on_join()
    assert p.feed("<Conclusion>c</Conclusion>") == [JoinClose(len(text) + 26)]
    assert p.feed("</Parallel>") == [BlockClose(len(text) + 37)]


def test_plan_item_across_deltas() -> None:
    p = TagParser(NPR)
    events = feed_all(p, "<guideline><pl", "an>1: do", " X</pl", "an><plan>2:", " Y</plan></guide", "line>")
    assert events[-1].plan_items == ("1: do X", "2: Y")


def test_branch_close_and_closed_state() -> None:
    p = TagParser(PARALLEL, "branch")
    assert feed_all(p, "<path>2: ab</pa", "th>") == [BranchClose(18)]
    assert p.state is S.CLOSED
    assert p.feed("</path><parallel>") == [] and p.finish() == [] and p.offset == 35


def test_branch_with_nested_block() -> None:
    p = TagParser(PARALLEL, "branch")
    assert p.feed("<path>1: x<parallel>") == [BlockOpen(20), Fork((), 20)]
    p.on_join()
    events = p.feed("<summary>s</summary></parallel></path>")
    assert events == [JoinClose(40), BlockClose(51), BranchClose(58)]


def test_join_role_starts_in_summary() -> None:
    p = TagParser(PARALLEL, "join")
    assert p.state is S.SUMMARY
    assert p.feed("<summary>s</summary></parallel>") == [JoinClose(20), BlockClose(31)]


def test_split_tags_fire_once_and_near_misses_never() -> None:
    p = TagParser(PARALLEL, "branch")
    assert feed_all(p, "<pathway> </pat", "<path> <<", "parallel>") == [
        BlockOpen(33), Fork((), 33)]
    q = TagParser(PARALLEL, "branch")
    assert feed_all(q, "</pat", "hway></pat") == [] and q.pending == 5


def test_bad_role_and_bad_join() -> None:
    with pytest.raises(ValueError):
        TagParser(PARALLEL, "leaf")
    with pytest.raises(RuntimeError):
        TagParser(PARALLEL).on_join()


def test_forked_text_is_read_sequentially() -> None:
    # Fallback: the block is decoded as plain text while the parser is FORKED.
    p = TagParser(PARALLEL)
    text = ("<parallel><path>1: <parallel><path>1: y</path><summary>in</summary>"
            "</parallel></path><path>2: z</path><summary>S</summary></parallel>")
    events = p.feed(text)
    assert events == [BlockOpen(10), Fork((), 10), JoinClose(len(text) - 11), BlockClose(len(text))]
    q = TagParser(NPR, "branch")
    nested = "<guideline><plan>a</plan></guideline><step>\n1:x</step><takeaway>t</takeaway>"
    assert [type(e) for e in q.feed(nested + "</step>")] == [
        BlockOpen, Fork, JoinClose, BlockClose, BranchClose]


@pytest.mark.parametrize("schema, role, text", [
    (PARALLEL, "root", "a<parallel><path>1: x</path><path>2: y</path><summary>s</summary></parallel>b"),
    (PARALLEL, "branch", "<path>1: x<parallel><path>1: y</path><summary>in</summary></parallel></path>"),
    (NPR, "root", "<guideline><plan>a</plan><plan>b</plan></guideline><step>\n1:x</step>"
                  "<takeaway>t</takeaway>"),
    (MULTIVERSE, "root", "<Parallel><Goal><Outline>1: a</Outline></Goal><Path>1: x</Path>"
                         "<Conclusion>c</Conclusion></Parallel>"),
])
def test_a_copied_parser_goes_on_as_the_original_would(schema: TagSchema, role: str, text: str) -> None:
    # At every cut of the text (a fork's header fed once, then copied per branch):
    # the copy and the parser it came from read the rest alike, and apart; so does a
    # new parser whose first text is the same (TagParser keeps what a first feed did).
    whole = TagParser(schema, role)
    expected = feed_all(whole, text)
    for cut in range(len(text) + 1):
        first = TagParser(schema, role)
        head = first.feed(text[:cut])
        copy = first.clone()
        assert head + copy.feed(text[cut:]) == expected and copy.state is whole.state
        assert head + feed_all(first, *text[cut:]) == expected and first.state is whole.state
        assert copy.offset == first.offset == len(text)
        again = TagParser(schema, role)  # the same first text: read from the first one's copy
        assert again.feed(text[:cut]) == head and feed_all(again, text[cut:]) == expected[len(head):]
        assert again.state is whole.state and again.offset == len(text)


# -- parser: malformed input ----------------------------------------------------------


@pytest.mark.parametrize("schema, role, text, expected", [
    (PARALLEL, "root", "a</path>", ["stray_branch_close"]),
    (PARALLEL, "root", "</summary><summary>", ["stray_join_close", "stray_join_header"]),
    (PARALLEL, "root", "</parallel>", ["stray_block_close"]),
    (PARALLEL, "branch", "x<summary>y</summary>", ["join_in_branch", "join_in_branch"]),
    (NPR, "root", "<plan>1</plan>", ["plan_outside_block", "plan_outside_block"]),
    (NPR, "branch", "<plan>1</plan>", ["plan_after_fork", "plan_after_fork"]),
    (NPR, "root", "</guideline>", ["stray_fork_after"]),
    (NPR, "root", "<guideline><guideline>", ["nested_open_before_fork"]),
    (NPR, "root", "<guideline></plan>", ["stray_plan_close"]),
    (NPR, "root", "<guideline></takeaway>", ["stray_join_close"]),
    (MULTIVERSE, "root", "<Parallel><Goal></Parallel>", ["close_before_fork"]),
])
def test_malformed_kinds(schema: TagSchema, role: str, text: str, expected: list[str]) -> None:
    p = TagParser(schema, role)
    assert kinds(p.feed(text)) == expected


def test_unclosed_plan_keeps_item() -> None:
    p = TagParser(NPR)
    events = p.feed("<guideline><plan>1: a</guideline>")
    assert events == [BlockOpen(11), Malformed("unclosed_plan", 33), Fork(("1: a",), 33)]
    q = TagParser(NPR)
    assert q.feed("<guideline><plan>a<plan>b</plan></guideline>")[-1].plan_items == ("a", "b")


def test_close_before_fork_closes_block() -> None:
    p = TagParser(MULTIVERSE)
    events = p.feed("<Parallel><Goal></Parallel>")
    assert events[1:] == [Malformed("close_before_fork", 27), BlockClose(27)]
    assert p.state is S.OUTSIDE


def summary_parser(schema: TagSchema = PARALLEL, role: str = "root") -> TagParser:
    p = TagParser(schema, role)
    p.feed(schema.block_open)
    if schema.fork_after != schema.block_open:
        p.feed(schema.fork_after)
    p.on_join()
    p.feed(schema.join_header)
    return p


def test_malformed_in_summary() -> None:
    p = summary_parser()
    assert kinds(p.feed("<plan><parallel></path><summary>")) == ["open_in_summary", "stray_branch_close"]
    assert p.state is S.SUMMARY
    npr = summary_parser(NPR)
    assert kinds(npr.feed("<plan>")) == ["plan_after_fork"]
    assert p.feed("</parallel>") == [Malformed("missing_join_close", 62), BlockClose(62)]


def test_missing_block_close_recovers() -> None:
    p = summary_parser()
    p.feed("</summary>")
    assert p.feed("<parallel>") == [Malformed("missing_block_close", 39), BlockClose(39),
                                    BlockOpen(39), Fork((), 39)]
    b = summary_parser(role="branch")
    b.feed("</summary>")
    assert b.feed("</path>") == [Malformed("missing_block_close", 36), BlockClose(36),
                                 BranchClose(36)]


def test_branch_close_inside_nested_summary() -> None:
    b = summary_parser(role="branch")
    assert b.feed("s</path>") == [Malformed("unclosed_block", 27), BlockClose(27),
                                  BranchClose(27)]
    assert b.state is S.CLOSED


@pytest.mark.parametrize("text, state", [
    ("<guideline>", S.OPEN), ("<guideline><plan>x", S.PLAN), ("<guideline></guideline>", S.FORKED),
])
def test_finish_reports_unclosed_block(text: str, state: ParserState) -> None:
    p = TagParser(NPR)
    p.feed(text)
    assert p.state is state and p.finish() == [Malformed("unclosed_block", len(text))]


def test_finish_in_summary() -> None:
    p = summary_parser()
    assert p.closing_text() == "</summary></parallel>"
    assert p.finish() == [Malformed("unclosed_block", 19)]


# -- segment and the reasoning split ----------------------------------------------------

FLAT_PARALLEL = ("Hi <parallel><path>1: a</path>\n<path>2: b<parallel><path>1: x</path>"
                 "<summary>s</summary></parallel></path><summary>S</summary></parallel> end")


def test_segment_parallel_tree() -> None:
    segs = segment(FLAT_PARALLEL, PARALLEL)
    assert [s.kind for s in segs] == ["outside", "block_open_to_fork", "branch", "branch",
                                      "join", "block_close", "outside"]
    assert "".join(s.text for s in segs) == FLAT_PARALLEL
    assert segs[2].text == "<path>1: a</path>\n" and segs[2].path == 1 and not segs[2].children
    nested = segs[3]
    assert nested.path == 2 and [c.depth for c in nested.children] == [1, 2, 2, 2, 2, 1]
    assert "".join(c.text for c in nested.children) == nested.text
    assert segs[4].text == "<summary>S</summary>" and segs[5].text == "</parallel>"


def test_segment_npr_and_unclosed() -> None:
    text = "Q<guideline><plan>1: a</plan></guideline><step>\n1: x</step><takeaway>t</takeaway>!"
    assert [s.kind for s in segment(text, NPR)] == [
        "outside", "block_open_to_fork", "branch", "join", "outside"]
    cut = segment("<parallel><path>1: unfinished", PARALLEL)
    assert [s.kind for s in cut] == ["block_open_to_fork", "branch"]
    assert cut[-1].end == len("<parallel><path>1: unfinished")


def test_split_reasoning_parallel() -> None:
    reasoning, content = split_reasoning(FLAT_PARALLEL, "parallel")
    assert reasoning == ("<parallel><path>1: a</path>\n<path>2: b<parallel><path>1: x</path>"
                         "<summary>s</summary></parallel></path>")
    assert content == "Hi <summary>S</summary></parallel> end"


@pytest.mark.parametrize("schema, block", [
    (NPR, "<guideline><plan>1: a</plan></guideline><step>\n1: x</step><takeaway>t</takeaway>"),
    (MULTIVERSE, ("<Parallel><Goal><Outline>1: a</Outline></Goal><Path>\n1: x</Path>"
                  "<Conclusion>c</Conclusion></Parallel>")),
])
def test_split_reasoning_whole_blocks(schema: TagSchema, block: str) -> None:
    assert split_reasoning(f"Q {block} A", schema) == (block, "Q  A")


def test_splitter_holds_back_partial_tag() -> None:
    s = ReasoningSplitter(PARALLEL)
    assert s.feed("Hi <para") == ("", "Hi ")
    assert s.feed("llel><path>1: a") == ("<parallel><path>1: a", "")
    assert s.feed("</path><summ") == ("</path>", "")
    assert s.feed("ary>ok") == ("", "<summary>ok")
    assert s.feed(" <") == ("", " ")
    assert s.finish() == ("", "<")


def test_options_are_built_once_per_set_but_a_schema_file_is_read_each_time(tmp_path: Path) -> None:
    """Rollouts send the same options with every request: those naming a registered
    schema are built once (shared, frozen); a schema file is checked with every request,
    so one removed since gives the next request a typed error, not a stale schema."""
    opts = {"npr": {"paths": 3, "schema": "npr"}}
    assert NprOptions.from_custom_params(opts) is NprOptions.from_custom_params({"npr": {"schema": "npr", "paths": 3}})
    with pytest.raises(InvalidNprOptions, match="paths"):
        NprOptions.from_custom_params({"npr": {"paths": True, "schema": "npr"}})  # typed key: True is not 1
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(NPR.to_dict() | {"name": "mine"}))
    with_file = {"npr": {"paths": 3, "schema": str(path)}}
    assert NprOptions.from_custom_params(with_file).tag_schema.name == "mine"
    path.unlink()
    with pytest.raises(InvalidNprOptions, match="schema"):
        NprOptions.from_custom_params(with_file)
