"""Malformed model output (docs/malformed.md): one behaviour each, no crash, no leak.

The model is forced through a script (tests/support/scripted.py); each test checks the
returned text, the trace, that the text parses back into the trace, and idle KV.
"""

from __future__ import annotations

from npr_engine.grammar import NPR, PARALLEL, ParserState, TagParser
from tests.support.engine import assert_idle
from tests.support.readback import assert_text_matches_trace
from tests.support.scripts import Blk, Pth, run_script, scripted_text


def check(engine, parts: list, **kwargs) -> tuple[dict, str, dict]:
    out, scripts = run_script(engine, parts, **kwargs)
    trace = out["meta_info"]["npr_trace"]
    assert_text_matches_trace(out["text"], trace)
    assert_idle(engine)
    return out, scripted_text(engine, scripts), trace


def test_stray_close_tags_are_kept_as_text(engine):
    parts = ["A </path> B </summary> C </parallel> D ",
             Blk([Pth(["x </summary> q </parallel> r"]), Pth(["y"])]), " end"]
    out, expected, trace = check(engine, parts)
    assert out["text"] == expected
    (block,) = trace["blocks"]
    assert block["width"] == 2 and [p["finish"] for p in block["paths"]] == ["close", "close"]
    assert out["meta_info"]["finish_reason"]["type"] == "stop"


def test_join_tag_inside_a_branch_is_branch_text(engine):
    out, expected, trace = check(engine, ["Go ", Blk([Pth(["x <summary> q"]), Pth(["y"])]), " end"])
    assert out["text"] == expected
    (block,) = trace["blocks"]
    assert [p["finish"] for p in block["paths"]] == ["close", "close"]
    assert block["join_tokens"] > 0


def test_eos_inside_the_summary_appends_the_close_tags(engine):
    out, expected, trace = check(engine, ["Go ", Blk([Pth(["x"]), Pth(["y"])], summary="S", closed=False)])
    assert out["text"] == expected + "</summary></parallel>"
    assert out["meta_info"]["finish_reason"]["type"] == "stop"


def test_eos_inside_a_sequential_block_appends_the_close_tags(engine):
    # max_depth 0: the block falls back to plain text; EOS lands inside path 1.
    out, expected, trace = check(engine, ["Go <parallel><path>1: x"], npr={"max_depth": 0})
    assert out["text"] == expected + "</path><summary></summary></parallel>"
    (block,) = trace["blocks"]
    assert block["fallback"] == "depth" and block["paths"] == []


def test_budget_inside_a_nested_sequential_block_closes_it(engine):
    # Path 1 opens a block at the depth limit (sequential text) and runs out of its
    # budget inside it: the engine closes the nested block, then the path.
    parts = ["Go ", Blk([Pth(["A <parallel><path>1: " + "z " * 30]), Pth(["y"])]), " end"]
    out, _, trace = check(engine, parts, npr={"max_depth": 1, "max_path_tokens": 24}, max_new_tokens=90)
    outer, inner = trace["blocks"]
    assert inner["fallback"] == "depth"
    assert [p["finish"] for p in outer["paths"]] == ["budget", "close"]
    assert "</path><summary></summary></parallel></path><path>2: " in out["text"]


def test_more_plan_items_than_max_paths_fork_max_paths(engine):
    parts = ["Go ", Blk([Pth(["a"]), Pth(["b"])], plan=["1: a", "2: b", "3: c"]), " end"]
    out, expected, trace = check(engine, parts, schema="npr", npr={"max_paths": 2})
    assert out["text"] == expected  # the third item stays in the text, with no path
    (block,) = trace["blocks"]
    assert block["width"] == 2 and len(block["paths"]) == 2


def test_plan_items_without_a_fork_point_stay_text(engine):
    out, expected, trace = check(engine, ["Go <guideline><plan>1: a</plan><plan>2: b</plan> then text"],
                                 schema="npr")
    assert out["text"] == expected
    assert trace["blocks"] == []


def test_plan_outside_a_block_is_text_and_an_empty_plan_forks_one_path(engine):
    out, expected, trace = check(engine, ["<plan>1: a</plan> Go ", Blk([Pth(["a"])], plan=[]), " end"],
                                 schema="npr")
    assert out["text"] == expected
    (block,) = trace["blocks"]
    assert block["width"] == 1 and block["fallback"] is None


# -- the parser's reading of sequential (fallback or flattened) blocks ---------------------


def sequential(schema, text: str) -> TagParser:
    parser = TagParser(schema, "branch")
    parser.feed(schema.block_open + (schema.fork_after if schema.fork_after != schema.block_open else ""))
    assert parser.state is ParserState.FORKED
    parser.feed(text)
    return parser


def test_join_header_inside_a_sequential_path_is_path_text():
    parser = sequential(PARALLEL, "<path>1: x <summary> y")
    assert parser.state is ParserState.FORKED
    assert parser.closing_text() == "</path><summary></summary></parallel>"
    parser.feed("</path><summary>z")
    assert parser.state is ParserState.SUMMARY


def test_closing_text_closes_every_nested_sequential_level():
    parser = sequential(PARALLEL, "<path>1: a <parallel><path>1: b</path><summary>c")
    assert parser.closing_text() == "</summary></parallel></path><summary></summary></parallel>"
    npr = sequential(NPR, "<step>\n1: a <guideline><plan>p</plan>")
    assert npr.closing_text() == "</guideline><takeaway></takeaway></step><takeaway></takeaway>"


def test_parked_parent_has_no_closing_text():
    parser = TagParser(PARALLEL, "root")
    parser.feed("<parallel>")
    assert parser.state is ParserState.FORKED and parser.closing_text() == ""
