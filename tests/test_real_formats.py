"""Serving NPR and Multiverse as trained: tags that are special tokens, exact text,
training positions (DESIGN.md section 2).

The tiny random Qwen3 of the session (`tiny` in conftest.py) has the real models'
tags as additional special tokens. A scripted logit processor makes it write the
families' own formats, with plans chosen by the model (widths 1, 2 and 5, sequential
NPR blocks, a nested Multiverse block with dotted ids); the engine writes what it
writes (fork separator, path headers, tails, join headers). The expected texts below
are written out by hand from the families' formats, not built by the engine's code.
"""

from __future__ import annotations

import pytest

from npr_engine.export import training_view
from tests.support.scripts import Blk, Pth, run_script

# -- the replies, as the families' data write them ----------------------------------------

NPR_TEXT = (
    "<guideline>\n<plan>1: Try small cases.</plan>\n<plan>2: Use algebra.</plan>\n</guideline>\n"
    "<step>\n1: small cases give 4.\n</step>\n<step>\n2: algebra gives 4.\n</step>\n"
    "<takeaway>\nBoth give 4.\n</takeaway>\n\n"
    "<guideline>\n<plan>1: a.</plan>\n<plan>2: b.</plan>\n<plan>3: c.</plan>\n<plan>4: d.</plan>\n"
    "<plan>5: e.</plan>\n</guideline>\n"
    "<step>\n1: A.\n</step>\n<step>\n2: B.\n</step>\n<step>\n3: C.\n</step>\n<step>\n4: D.\n</step>\n"
    "<step>\n5: E.\n</step>\n<takeaway>\nAll five agree.\n</takeaway>\n\n"
    "<guideline>\n<plan>1: Check once.</plan>\n</guideline>\n"
    "<step>\n1: it holds.\n</step>\n<takeaway>\nChecked.\n</takeaway>\n\n"
    "The answer is 4."
)
NPR_WIDTHS = [2, 5, 1]


def npr_parts() -> list:
    def block(plans: list[str], steps: list[str], takeaway: str) -> Blk:
        open_text = "\n" + "".join(f"<plan>{p}</plan>\n" for p in plans)
        return Blk(paths=[Pth([f" {s}\n"]) for s in steps], summary=f"\n{takeaway}\n",
                   plan=plans, open_text=open_text)

    return [
        block(["1: Try small cases.", "2: Use algebra."], ["small cases give 4.", "algebra gives 4."],
              "Both give 4."),
        "\n\n",
        block([f"{i}: {c}." for i, c in enumerate("abcde", start=1)], [f"{c}." for c in "ABCDE"],
              "All five agree."),
        "\n\n",
        block(["1: Check once."], ["it holds."], "Checked."),
        "\n\nThe answer is 4.",
    ]


MULTIVERSE_TEXT = (
    "<Think>\n<Parallel>\n<Goal>\n<Outline>\n1: Split.\n</Outline>\n<Outline>\n2: Direct.\n</Outline>\n</Goal>\n"
    "<Path>\n1: Split it.\n"
    "<Parallel>\n<Goal>\n<Outline>\n1.1: Left.\n</Outline>\n<Outline>\n1.2: Right.\n</Outline>\n</Goal>\n"
    "<Path>\n1.1: left is 3.\n</Path>\n<Path>\n1.2: right is 4.\n</Path>\n"
    "<Conclusion>\nSo 7.\n</Conclusion>\n</Parallel>\n</Path>\n"
    "<Path>\n2: direct gives 7.\n</Path>\n"
    "<Conclusion>\nBoth give 7.\n</Conclusion>\n</Parallel>\n</Think>\nThe answer is 7."
)


def multiverse_parts() -> list:
    def block(plans: list[str], paths: list[Pth], conclusion: str) -> Blk:
        open_text = "\n<Goal>\n" + "".join(f"<Outline>\n{p}\n</Outline>\n" for p in plans)
        return Blk(paths=paths, summary=f"\n{conclusion}\n", plan=plans, open_text=open_text, close_sep="\n")

    inner = block(["1.1: Left.", "1.2: Right."], [Pth([" left is 3.\n"]), Pth([" right is 4.\n"])], "So 7.")
    outer = block(["1: Split.", "2: Direct."],
                  [Pth([" Split it.\n", inner, "\n"]), Pth([" direct gives 7.\n"])], "Both give 7.")
    return ["<Think>\n", outer, "\n</Think>\nThe answer is 7."]


SCRIPTS = {"npr": (npr_parts, NPR_TEXT), "multiverse": (multiverse_parts, MULTIVERSE_TEXT)}


def run(llm, schema: str, **extra):
    parts, _ = SCRIPTS[schema]
    return run_script(llm, parts(), schema=schema, prompt="What is 3 + 4? Think in parallel.", **extra)


# -- offline Engine -----------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["npr", "multiverse"])
def test_offline_reply_is_the_trained_text(tiny, schema):
    from tests.support.engine import assert_idle

    _, llm = tiny
    out, scripts = run(llm, schema)
    assert out["text"] == SCRIPTS[schema][1]
    assert list(out["output_ids"]) == scripts[""][: len(out["output_ids"])]
    blocks = out["meta_info"]["npr_trace"]["blocks"]
    assert all(b["fallback"] is None for b in blocks), blocks
    if schema == "npr":
        assert [b["width"] for b in blocks] == NPR_WIDTHS
        assert all(b["depth"] == 1 for b in blocks)
    else:
        assert [(b["depth"], b["width"]) for b in blocks] == [(1, 2), (2, 2)]
    assert_idle(llm)
