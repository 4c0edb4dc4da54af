"""Fork and join inside SGLang's scheduler, on the default model (float32, greedy)."""

from __future__ import annotations

import copy

import pytest

from npr_engine.core.options import BranchSampling, InvalidNprOptions, NprOptions, wire_custom_params
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


# -- parallel.branch_sampling ---------------------------------------------------------

BLOCK = {"max_path_tokens": 20}


def _branches(out: dict) -> list[str]:
    return [s.text for s in segment(out["text"], get_schema("parallel")) if s.kind == "branch"]


def _fork_offset(out: dict) -> int:
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["fallback"] is None and block["width"] == 2
    return block["fork_offset"]


def test_branch_temperature_samples_the_branches_and_leaves_the_parent_greedy(engine):
    greedy = engine.generate(PROMPT, params(70, forced(2, **BLOCK)))
    hot = engine.generate(PROMPT, params(70, forced(2, **BLOCK, branch_sampling={"temperature": 1.5})),
                          return_logprob=True, top_logprobs_num=1)
    fork = _fork_offset(hot)
    assert fork == _fork_offset(greedy) and hot["output_ids"][:fork] == greedy["output_ids"][:fork]
    assert _branches(hot) != _branches(greedy)
    trace = hot["meta_info"]["npr_trace"]
    (block,) = trace["blocks"]
    ids, top = hot["output_ids"], hot["meta_info"]["output_top_logprobs"]
    starts = [fork + sum(p["tokens"] for p in block["paths"][:k]) for k in range(len(block["paths"]) + 1)]
    injected = {starts[k] + i for k, p in enumerate(block["paths"]) for i in p["injected"]} | set(trace["injected"])
    join_end = starts[-1] + block["join_tokens"]
    assert engine.tokenizer_manager.tokenizer.decode(ids[:join_end]).endswith("<summary>")
    # Branches sampled (some token is not the most likely one); the parent, after the
    # join, still takes the most likely token every step.
    branch_tokens = [i for i in range(fork, starts[-1]) if i not in injected]
    parent_tokens = [i for i in range(join_end, len(ids)) if i not in injected]
    assert parent_tokens and all(top[i][0][1] == ids[i] for i in parent_tokens)
    assert any(top[i][0][1] != ids[i] for i in branch_tokens)
    assert_idle(engine)


def test_greedy_branches_under_a_sampled_parent_match_greedy_ones(engine):
    greedy = engine.generate(PROMPT, params(70, forced(2, **BLOCK)))
    cold = engine.generate(PROMPT, params(70, forced(2, **BLOCK, branch_sampling={"temperature": 0}),
                                          temperature=1.0))
    _fork_offset(cold)
    assert _branches(cold) == _branches(greedy)
    assert_idle(engine)


def test_branch_repetition_penalty_changes_the_branches(engine):
    # The request has no penalty: SGLang's penalizers must still run for the branch rows.
    greedy = engine.generate(PROMPT, params(70, forced(2, **BLOCK)))
    strict = engine.generate(PROMPT, params(70, forced(2, **BLOCK, branch_sampling={"repetition_penalty": 2.0})))
    fork = _fork_offset(strict)
    assert strict["output_ids"][:fork] == greedy["output_ids"][:fork]
    assert _branches(strict) != _branches(greedy)
    assert [b.split(": ", 1)[0] for b in _branches(strict)] == ["<path>1", "<path>2"]
    assert_idle(engine)


@pytest.mark.parametrize(
    ("sampling", "field"),
    [({"temperature": -0.1}, "temperature"), ({"temperature": float("inf")}, "temperature"),
     ({"temperature": True}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"),
     ({"top_p": "0.9"}, "top_p"), ({"top_k": 0}, "top_k"), ({"top_k": -2}, "top_k"), ({"top_k": 2.0}, "top_k"),
     ({"min_p": -0.1}, "min_p"), ({"min_p": 1.5}, "min_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
     ({"repetition_penalty": 2.5}, "repetition_penalty"), ({"frequency_penalty": 2.1}, "frequency_penalty"),
     ({"presence_penalty": -3}, "presence_penalty"), ({"seed": 1}, "seed")],
)
def test_branch_sampling_is_checked_like_sglangs_sampling_params(sampling, field):
    with pytest.raises(InvalidNprOptions) as bad:
        NprOptions.from_dict({"branch_sampling": sampling})
    assert bad.value.field == f"branch_sampling.{field}"
    with pytest.raises(InvalidNprOptions) as bad:
        NprOptions.from_dict({"branch_sampling": [sampling]})
    assert bad.value.field == "branch_sampling"


def test_branch_sampling_applies_to_a_branch_copy_and_crosses_sglangs_ipc():
    import msgspec
    from sglang.srt.sampling.sampling_params import TOP_K_ALL, SamplingParams

    npr = {"force": True, "branch_sampling": {"temperature": 1.5, "top_p": 0.9, "repetition_penalty": 1.3}}
    custom = {"npr": npr}
    nested = SamplingParams(temperature=0, custom_params=custom)
    with pytest.raises(msgspec.ValidationError):  # why the wire form exists
        msgspec.msgpack.decode(msgspec.msgpack.encode(nested), type=SamplingParams)
    sent = SamplingParams(temperature=0, custom_params=wire_custom_params(custom))
    assert custom == {"npr": npr}  # the caller's dict is left as it was
    parent = msgspec.msgpack.decode(msgspec.msgpack.encode(sent), type=SamplingParams)
    options = NprOptions.from_custom_params(parent.custom_params)
    assert options == NprOptions.from_dict(npr)
    branch = copy.copy(parent)
    options.branch_sampling.apply(branch)
    # A greedy request is top_k 1 in SGLang: a branch temperature lifts it.
    assert (branch.temperature, branch.top_k, branch.top_p, branch.repetition_penalty) == (1.5, TOP_K_ALL, 0.9, 1.3)
    assert (parent.temperature, parent.top_k, parent.top_p, parent.repetition_penalty) == (1.0, 1, 1.0, 1.0)
    sampled = SamplingParams(temperature=0.8, top_k=40)
    BranchSampling(temperature=0).apply(sampled)
    assert (sampled.temperature, sampled.top_k) == (1.0, 1)
    BranchSampling(temperature=0.7, top_k=-1).apply(sampled)
    assert (sampled.temperature, sampled.top_k) == (0.7, TOP_K_ALL)
