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
    assert list(out["output_ids"]) == scripts[""] + [llm.tokenizer_manager.tokenizer.eos_token_id]
    blocks = out["meta_info"]["npr_trace"]["blocks"]
    assert all(b["fallback"] is None for b in blocks), blocks
    if schema == "npr":
        assert [b["width"] for b in blocks] == NPR_WIDTHS
        assert all(b["depth"] == 1 for b in blocks)
    else:
        assert [(b["depth"], b["width"]) for b in blocks] == [(1, 2), (2, 2)]
    assert_idle(llm)


# -- training positions and mask, written from the families' trainers' description --------


FAMILY_TAGS = {  # block open, fork point, path open, path close, join, block end
    "npr": ("<guideline>", "</guideline>", "<step>", "</step>", "<takeaway>", "</takeaway>"),
    "multiverse": ("<Parallel>", "</Goal>", "<Path>", "</Path>", "<Conclusion>", "</Parallel>"),
}


def training_rule(ids: list[int], start: int, tag_ids: dict[str, int], schema: str):
    """Positions and per-block path spans as the families' trainers compute them.

    Positions count up token by token; at each path open of a block the position
    resets to pos(fork point) + 1; at the join it becomes pos(fork point) + the longest
    path + 1, a path's length being pos(its close) - pos(fork point). Spans (path open
    .. path close, inclusive) of one block never see each other.
    """
    opening, fork, p_open, p_close, join, end = (tag_ids[t] for t in FAMILY_TAGS[schema])
    positions, blocks, stack, p = [], [], [], 0
    for t, tok in enumerate(ids):
        top = stack[-1] if stack else None
        if t >= start and top is not None and top["g"] is not None and top["span"] is None:
            if tok == p_open:
                p, top["span"] = top["g"] + 1, t
            elif tok == join:
                p = top["g"] + top["longest"] + 1
        positions.append(p)
        if t >= start:
            if tok == opening and (top is None or top["span"] is not None or top["g"] is None):
                stack.append({"g": None, "fork": None, "longest": 0, "span": None, "spans": []})
            elif top is not None and tok == fork and top["g"] is None:
                top["g"], top["fork"] = p, t
            elif top is not None and tok == p_close and top["span"] is not None:
                top["longest"] = max(top["longest"], p - top["g"])
                top["spans"].append((top["span"], t))
                top["span"] = None
            elif top is not None and tok == end and top["span"] is None and top["g"] is not None:
                blocks.append(stack.pop())
        p += 1
    return positions, blocks


def training_visible(q: int, k: int, blocks: list[dict]) -> bool:
    if k > q:
        return False
    for block in blocks:
        spans = block["spans"]
        for i, (s_i, e_i) in enumerate(spans):
            for j, (s_j, e_j) in enumerate(spans):
                if i != j and s_i <= k <= e_i and s_j <= q <= e_j:
                    return False
    return True


def _in(ranges, k: int) -> bool:
    return any(lo <= k < hi for lo, hi in ranges)


def classify_differences(view, blocks: list[dict]) -> dict[str, int]:
    """Count (query, key) pairs where the engine's view and the training mask differ:
    `separator` = the pairs the issue allows (a query in path j >= 2 against a key
    outside every path span, after the fork point and before path j); `tail` = a
    query in a path's tail (the text after its close, outside every span) of path
    j >= 2 against a key in an earlier path or its tail; `other` = anything else."""
    counts = {"separator": 0, "tail": 0, "other": 0}
    n = len(view.input_ids)
    for q in range(n):
        for k in range(q + 1):
            if _in(view.visible[q], k) == training_visible(q, k, blocks):
                continue
            counts[_kind(q, k, blocks)] += 1
    return counts


def _kind(q: int, k: int, blocks: list[dict]) -> str:
    for block in blocks:
        spans = block["spans"]
        starts = [s for s, _ in spans]
        # The tail of path j runs from its close to the next path's open (or the join).
        ends = [e for _, e in spans]
        nexts = starts[1:] + [ends[-1] + 2]
        for j in range(1, len(spans)):
            in_span = starts[j] <= q <= ends[j]
            outside = all(not (s <= k <= e) for s, e in spans)
            if in_span and outside and block["fork"] < k < starts[j]:
                return "separator"
            in_tail = ends[j] < q < nexts[j]
            if in_tail and starts[0] <= k < starts[j]:
                return "tail"
    return "other"


@pytest.mark.parametrize("schema", ["npr", "multiverse"])
def test_positions_equal_training_and_visibility_differs_only_where_a_fork_must(tiny, schema):
    from tests.support.engine import assert_idle

    _, llm = tiny
    tokenizer = llm.tokenizer_manager.tokenizer
    out, _ = run(llm, schema, return_logprob=True)  # one token per step for injected text
    assert out["text"] == SCRIPTS[schema][1]
    prompt = tokenizer.encode("What is 3 + 4? Think in parallel.")
    assert len(prompt) == out["meta_info"]["prompt_tokens"]
    view = training_view(out, prompt)
    tag_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in FAMILY_TAGS[schema]}
    positions, blocks = training_rule(view.input_ids, len(prompt), tag_ids, schema)
    assert len(blocks) == (3 if schema == "npr" else 2)
    assert view.position_ids == positions
    counts = classify_differences(view, blocks)
    print(f"{schema}: visibility differences from the training mask: {counts}")
    # Staged joins compute every tail after the paths before it: only the separators a
    # later sibling cannot see remain (the pairs DESIGN.md section 2 names).
    assert counts["other"] == 0 and counts["tail"] == 0, counts
    assert counts["separator"] > 0  # W >= 2 blocks: a fork cannot show everything
    assert_idle(llm)


@pytest.mark.parametrize(("schema", "opening"), [
    ("npr", "<guideline>\n<plan>1:</plan>\n<plan>2:</plan>\n</guideline>\n<step>\n1:"),
    ("multiverse", "<Parallel>\n<Goal>\n<Outline>\n1:\n</Outline>\n<Outline>\n2:\n</Outline>\n</Goal>\n"
                   "<Path>\n1:"),
])
def test_forced_block_opens_in_the_family_format(tiny, schema, opening):
    """`force`: the engine writes the open text itself (Multiverse's with its <Goal>)."""
    from tests.support.engine import assert_idle

    _, llm = tiny
    out = llm.generate("Q:", {"max_new_tokens": 40, "temperature": 0, "custom_params": {
        "npr": {"schema": schema, "force": True, "paths": 2, "max_path_tokens": 8}}})
    assert out["text"].startswith(opening), out["text"]
    (block, *_) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["width"] == 2 and block["fallback"] is None and block["separator"] == 1
    header_2 = {"npr": "<step>\n2:", "multiverse": "<Path>\n2:"}[schema]
    assert header_2 in out["text"]
    assert_idle(llm)


def test_family_defaults_are_schema_data():
    from npr_engine.core.options import NprOptions
    from npr_engine.grammar import TagSchema, get_schema

    assert NprOptions(schema="npr").max_depth == 1  # NPR never trained nested blocks
    assert NprOptions(schema="multiverse").max_depth == 2
    assert NprOptions(schema="npr", max_depth=2).max_depth == 2
    npr = get_schema("npr")
    assert npr.path_ids(("1: a", "2.1: b", "no id"), 4) == ["1", "2.1", "3", "4"]
    # A user's JSON schema says the same things (lists become tuples, so it hashes).
    mine = TagSchema.from_dict({**npr.to_dict(), "name": "mine", "keep_tokens": ["<x>"]})
    assert mine.keep_tokens == ("<x>",) and mine.fork_separator == "\n" and {mine}
    with pytest.raises(ValueError, match="forced_open"):
        TagSchema.from_dict({**npr.to_dict(), "name": "bad", "forced_open": "<guideline>"})


def test_a_block_past_max_depth_is_plain_text_with_the_same_kv(tiny):
    """NPR trains no nesting (max_depth 1): a <guideline> inside a step is decoded as
    plain text. The engine still writes the separator after its </guideline>; with one
    extend step per written piece (no log-probs) and one token per step (log-probs) the
    model must see the same context, so its own greedy choices agree, and the log-probs
    match a dense forward over the exported view."""
    from tests.support.engine import assert_idle
    from tests.support.scripts import ScriptBuilder
    from tests.support.sparse_script import SparseScript
    from tests.test_export import LOGPROB_ATOL, dense_logprobs

    model_dir, llm = tiny
    tokenizer = llm.tokenizer_manager.tokenizer
    inner = Blk(paths=[Pth([" inner step.\n"])], summary="\ninner takeaway.\n", plan=["1: Inner plan."],
                open_text="\n<plan>1: Inner plan.</plan>\n", fallback=True)
    after = " then the outer path goes on with words the model picks for itself.\n"
    outer = Blk(paths=[Pth([" outer one.\n", inner, "\n" + after]), Pth([" outer two.\n"])],
                summary="\nDone, and the takeaway goes on with more of the model's own words.\n",
                plan=["1: First.", "2: Second."], open_text="\n<plan>1: First.</plan>\n<plan>2: Second.</plan>\n")
    scripts = ScriptBuilder(tokenizer, "npr", sparse=True).build([outer, "\n\nAnswer."])
    prompt = tokenizer.encode("Nest once.")
    sampling = {"max_new_tokens": len(scripts[""]) + 8, "temperature": 0,
                "custom_params": {"npr": {"schema": "npr"}, "script": scripts, "eos": tokenizer.eos_token_id}}
    processor = SparseScript().to_str()
    stepwise = llm.generate(input_ids=prompt, sampling_params=sampling, return_logprob=True,
                            custom_logit_processor=processor)
    blocks = stepwise["meta_info"]["npr_trace"]["blocks"]
    assert [(b["depth"], b["width"], b["fallback"]) for b in blocks] == [(1, 2, None), (2, 1, "depth")]
    at_once = llm.generate(input_ids=prompt, sampling_params=sampling, custom_logit_processor=processor)
    assert at_once["output_ids"] == stepwise["output_ids"]
    view = training_view(stepwise, prompt)
    exact, _ = dense_logprobs(model_dir, view)
    checked = [j for j, t in enumerate(scripts[""]) if t is None]
    bad = [(j, view.logprobs[j], exact[j]) for j in checked if abs(view.logprobs[j] - exact[j]) > LOGPROB_ATOL]
    assert not bad, (bad, stepwise["output_ids"])
    assert_idle(llm)


def test_what_the_fork_costs_against_the_training_mask_on_the_tiny_model(tiny):
    """The engine against two dense forwards over its own flattened reply: with the
    exported view (the engine's own attention: exact), and with the training rule's
    positions and mask (what the families trained on). The second difference is what a
    fork/join engine's remaining visibility differences cost; a tiny random model's
    figure, not a real model's."""
    from npr_engine.export import TrainingView
    from tests.support.engine import assert_idle
    from tests.support.scripts import ScriptBuilder
    from tests.support.sparse_script import SparseScript
    from tests.test_export import LOGPROB_ATOL, dense_logprobs

    model_dir, llm = tiny
    tokenizer = llm.tokenizer_manager.tokenizer
    scripts = ScriptBuilder(tokenizer, "npr", sparse=True).build(npr_parts()[:3])
    prompt = tokenizer.encode("What is 3 + 4? Think in parallel.")
    sampling = {"max_new_tokens": len(scripts[""]) + 8, "temperature": 0,
                "custom_params": {"npr": {"schema": "npr"}, "script": scripts, "eos": tokenizer.eos_token_id}}
    out = llm.generate(input_ids=prompt, sampling_params=sampling, return_logprob=True,
                       custom_logit_processor=SparseScript().to_str())
    blocks = out["meta_info"]["npr_trace"]["blocks"]
    assert [(b["width"], b["fallback"]) for b in blocks] == [(2, None), (5, None)], "the model broke the format"
    view = training_view(out, prompt)
    forced = [t is not None for t in scripts[""]] + [True]
    checked = [j for j in range(view.output_len) if not forced[j] or view.injected[j]]
    engine = view.logprobs
    exact, _ = dense_logprobs(model_dir, view)
    bad = [(j, out["output_ids"][j], engine[j], exact[j]) for j in checked if abs(engine[j] - exact[j]) > LOGPROB_ATOL]
    assert not bad, (bad, out["output_ids"], blocks)

    tag_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in FAMILY_TAGS["npr"]}
    positions, spans = training_rule(view.input_ids, len(prompt), tag_ids, "npr")
    n = len(view.input_ids)
    visible = [tuple((k, k + 1) for k in range(q + 1) if training_visible(q, k, spans)) for q in range(n)]
    trained = TrainingView(view.input_ids, positions, visible, view.prompt_len, view.logit_index, view.injected)
    dense, _ = dense_logprobs(model_dir, trained)
    worst = max(abs(engine[j] - dense[j]) for j in checked)
    print(f"tiny model: {len(checked)} log-probs, max |engine - dense(training mask)| = {worst:.3g}, "
          f"max |engine - dense(exported view)| = {max(abs(engine[j] - exact[j]) for j in checked):.3g}")
    assert worst > LOGPROB_ATOL  # the differences are real (else the classification above is wrong)
    # Without log-probs the engine writes its text in one extend step per piece: same
    # positions and KV, so the model's own greedy choices are the same.
    again = llm.generate(input_ids=prompt, sampling_params=sampling, custom_logit_processor=SparseScript().to_str())
    assert again["output_ids"] == out["output_ids"]
    assert_idle(llm)
