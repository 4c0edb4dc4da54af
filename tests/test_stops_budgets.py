"""Stops and limits inside blocks (DESIGN.md section 6).

EOS inside a branch ends that branch only; user stop strings apply outside branches
(and in summaries), never inside one. `max_tokens` running out inside a block is in
tests/test_fork_join.py (test_max_tokens_inside_a_block_closes_it_and_finishes_with_length).
"""

from __future__ import annotations

from tests.support.engine import assert_idle
from tests.support.readback import assert_text_matches_trace
from tests.support.scripts import Blk, Pth, run_script, scripted_text


def test_eos_inside_a_branch_ends_only_that_branch(engine):
    out, scripts = run_script(engine, ["Go ", Blk([Pth(["x"], end="eos"), Pth(["y"])]), " end"])
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert [p["finish"] for p in block["paths"]] == ["eos", "close"]
    # The engine wrote the close tag in place of EOS; the reply went on after the join.
    assert out["text"] == scripted_text(engine, scripts)
    assert out["text"].endswith("</parallel> end")
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    assert_idle(engine)


def test_eos_inside_a_nested_branch_ends_only_that_branch(engine):
    inner = Blk([Pth(["p"], end="eos"), Pth(["q"])], summary="T")
    out, scripts = run_script(engine, ["Go ", Blk([Pth(["A ", inner, " B"]), Pth(["y"])]), " end"])
    outer, nested = out["meta_info"]["npr_trace"]["blocks"]
    assert [p["finish"] for p in nested["paths"]] == ["eos", "close"]
    assert [p["finish"] for p in outer["paths"]] == ["close", "close"]
    assert out["text"] == scripted_text(engine, scripts)
    assert_text_matches_trace(out["text"], out["meta_info"]["npr_trace"])
    assert_idle(engine)


def test_stop_strings_apply_outside_branches_only(engine):
    # STOP in both paths (the last one right before its close tag) ends nothing; the
    # STOP in the summary ends the reply.
    parts = ["Go ", Blk([Pth(["x STOP y"]), Pth(["y STOP"])], summary="S STOP more"), " end"]
    out, _ = run_script(engine, parts, stop=["STOP"])
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "stop", "matched": "STOP"}, meta["finish_reason"]
    (block,) = meta["npr_trace"]["blocks"]
    assert [p["finish"] for p in block["paths"]] == ["close", "close"]
    text = out["text"]
    assert "<path>1: x STOP y</path><path>2: y STOP</path><summary>S" in text, text
    assert " more" not in text and text.endswith("</summary></parallel>")
    assert_idle(engine)


def test_stop_string_before_a_block_ends_the_reply_before_it(engine):
    out, _ = run_script(engine, ["Go STOP ", Blk([Pth(["x"]), Pth(["y"])])], stop=["STOP"])
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    assert out["meta_info"]["npr_trace"]["blocks"] == []
    assert "<parallel>" not in out["text"]
    assert_idle(engine)


def _calm_row_steps(engine) -> int:
    return engine.get_server_info()["internal_states"][0]["npr_calm_row_steps"]


def test_quiet_branches_close_at_their_budget(engine):
    """Branches writing plain text are skipped by the controller (npr_engine/sched/calm.py)
    until an id that may start a tag, or the step where their budget could end them:
    they still close exactly at the budget, side by side the whole time."""
    words = " ".join(["word"] * 60)
    before = _calm_row_steps(engine)
    out, _ = run_script(engine, ["Go ", Blk([Pth([words]), Pth([words])]), " end"], npr={"max_path_tokens": 24})
    skipped = _calm_row_steps(engine) - before
    trace = out["meta_info"]["npr_trace"]
    (block,) = trace["blocks"]
    assert [(p["finish"], p["tokens"]) for p in block["paths"]] == [("budget", 24), ("budget", 24)]
    assert trace["parallel_rate"] == 1.0
    # Most of each path's steps were skipped (all but its first and last few).
    assert skipped >= 2 * 12, skipped
    assert_idle(engine)
