"""Fork and join inside SGLang's scheduler, on the default model (float32, greedy)."""

from __future__ import annotations

import pytest

from npr_engine.grammar import get_schema, segment
from tests.support.engine import assert_idle, debug_events, forced, params

PROMPT = "Explain why the sky is blue."


def test_forced_block_three_distinct_paths_and_summary(engine):
    out = engine.generate(PROMPT, params(70, forced(3, max_path_tokens=14)))
    text, trace = out["text"], out["meta_info"]["npr_trace"]
    assert text.startswith("<parallel><path>1: ")
    top = segment(text, get_schema("parallel"))
    branches = [s for s in top if s.kind == "branch"]
    assert [b.path for b in branches] == [1, 2, 3]
    assert len({b.text.split(": ", 1)[1] for b in branches}) >= 2 or len({b.text for b in branches}) == 3
    assert any(s.kind == "join" for s in top), text
    (block,) = trace["blocks"]
    assert block["width"] == 3 and block["fallback"] is None
    assert [p["index"] for p in block["paths"]] == [1, 2, 3]
    assert all(p["finish"] in ("close", "budget") for p in block["paths"])
    assert trace["total_tokens"] == out["meta_info"]["completion_tokens"] == 70
    assert trace["parallel_rate"] == 1.0
    longest = max(p["tokens"] for p in block["paths"])
    assert trace["critical_path_tokens"] == 70 - sum(p["tokens"] for p in block["paths"]) + longest
    assert_idle(engine)


def test_fork_aliases_prefix_and_join_concatenates_slots(engine):
    out = engine.generate(PROMPT, params(40, forced(2, max_path_tokens=8)))
    rid = out["meta_info"]["id"]
    (fork,) = debug_events(engine, rid)[:1]
    assert fork["event"] == "fork"
    prefix = fork["prefix"]
    # Every branch row starts with exactly the parent's prefix slots: aliased, not copied.
    assert fork["branch_prefixes"] == [prefix, prefix]
    parks = [e for e in debug_events(engine) if e["event"] == "park" and e["row"] in fork["rows"]][-2:]
    join = [e for e in debug_events(engine, rid) if e["event"] == "join"][-1]
    joined = join["row"]
    assert joined[: len(prefix)] == prefix
    own = joined[len(prefix):]
    # The forced block open is written at once: every branch computes those tokens after
    # the prefix; branch 1 keeps its copies, branch 2's are freed exactly once.
    u = fork["uncommitted"]
    assert u == len(engine.tokenizer_manager.tokenizer.encode("<parallel>", add_special_tokens=False))
    assert len(join["freed"]) == u and not set(join["freed"]) & set(joined)
    assert len(own) == sum(p["kv"] - len(prefix) for p in parks) - u
    assert len(set(joined)) == len(joined)
    assert_idle(engine)


def test_disabled_request_is_plain(engine):
    out = engine.generate(PROMPT, params(12, {"npr": {"enabled": False, "force": True}}))
    assert "npr_trace" not in out["meta_info"]
    assert not out["text"].startswith("<parallel>")
    assert_idle(engine)


def test_concurrent_blocks_do_not_change_a_plain_request(engine):
    plain = params(24, ignore_eos=True)
    alone = engine.generate("List three fruits:", plain)["text"]
    start = engine.get_server_info()["internal_states"][0]["npr_kv"]["forward_ct"]
    outs = engine.generate(
        ["Why is the sea salty?", "Name two planets.", "List three fruits:"],
        [params(30, forced(2, max_path_tokens=12)), params(40, forced(3, max_path_tokens=10)), plain],
    )
    steps = engine.get_server_info()["internal_states"][0]["npr_kv"]["forward_ct"] - start
    assert outs[2]["text"] == alone
    assert all(o["meta_info"]["npr_trace"]["blocks"][0]["fallback"] is None for o in outs[:2])
    # At most 40 tokens per request: one prefill step (or one per request), then one
    # decode step per token of the longest chain. Forks and joins add no step of their own.
    assert steps <= 40 + 3, steps
    assert_idle(engine)


def test_sampled_siblings_draw_different_streams(engine):
    sampling = {"max_new_tokens": 80, "temperature": 1.0, "sampling_seed": 1234,
                "custom_params": forced(4, max_path_tokens=10)}
    text = engine.generate(PROMPT, sampling)["text"]
    branches = [s.text for s in segment(text, get_schema("parallel")) if s.kind == "branch"]
    bodies = [b.split(": ", 1)[1] for b in branches]
    assert len(bodies) == 4 and len(set(bodies)) > 1, bodies
    assert_idle(engine)


def test_max_tokens_inside_a_block_closes_it_and_finishes_with_length(engine):
    out = engine.generate(PROMPT, params(60, forced(3), ignore_eos=True))
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] == "length"
    assert meta["completion_tokens"] <= 60
    (block,) = meta["npr_trace"]["blocks"]
    assert {p["finish"] for p in block["paths"]} == {"length"}
    assert out["text"].count("</path>") == 3 and out["text"].endswith("</parallel>")
    assert_idle(engine)


def test_fork_that_does_not_fit_max_tokens_falls_back(engine):
    out = engine.generate(PROMPT, params(20, forced(3)))
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["fallback"] == "max_tokens" and block["paths"] == []
    assert out["meta_info"]["completion_tokens"] == 20
    assert_idle(engine)


@pytest.mark.parametrize(
    ("npr", "field"),
    [({"paths": 0}, "paths"), ({"schema": "nosuch"}, "schema"), ({"max_path_tokens": -1}, "max_path_tokens"),
     ({"positions": "weird"}, "positions"), ({"force": "yes"}, "force"), ({"bogus": 1}, "bogus")],
)
def test_invalid_options_raise_a_typed_error(engine, npr, field):
    with pytest.raises(ValueError, match=f"parallel.{field}"):
        engine.generate(PROMPT, params(8, {"npr": npr}))
    assert_idle(engine)
