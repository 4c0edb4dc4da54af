"""Trainer export: the engine's log-probs for a nested block equal one dense forward.

A tiny random Qwen3 (float32) writes a nested block; a sparse script forces only the
tags the model would write (block open, close tags, summary end) and leaves every
other token to the model, the engine injecting headers itself. The dense reference is
transformers' forward over prompt + output with the exported 4D mask and positions.
"""

from __future__ import annotations

import pytest

from npr_engine.export import additive_mask, bool_mask, build_view, training_view
from npr_engine.grammar import get_schema

# float32 on both sides; the engine's batched torch_native attention and the dense
# eager attention sum in different orders (measured max error 9.5e-7 on CPU).
LOGPROB_ATOL = 1e-5

INJ = "injected"  # script marker: the engine writes this token (left free for the model)


# -- pure unit test of the layout and mask -----------------------------------------------


def test_mask_and_positions_for_a_nested_block():
    #  prompt p0 p1 | a t | path1: h x t' [n1: u] [n2: v w] j y | path2: h z | J e
    trace = {
        "blocks": [
            {"id": 0, "parent_block": None, "parent_path": None, "fork_offset": 2, "fallback": None,
             "paths": [{"index": 1, "tokens": 8, "injected": [0, 6]}, {"index": 2, "tokens": 2, "injected": [0]}]},
            {"id": 1, "parent_block": 0, "parent_path": 1, "fork_offset": 3, "fallback": None,
             "paths": [{"index": 1, "tokens": 1, "injected": []}, {"index": 2, "tokens": 2, "injected": [0]}]},
        ],
        "injected": [12],
    }
    view = build_view(trace, [100, 101], list(range(14)))
    #                       p0 p1 a  t  h  x  t' u  v  w  j  y  h  z  J  e
    assert view.position_ids == [0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 4, 5, 11, 12]
    assert view.visible[7] == ((0, 8),)  # n1's u: prompt, prefix, path 1 up to t', itself
    assert view.visible[9] == ((0, 7), (8, 10))  # n2's w: not n1
    assert view.visible[11] == ((0, 12),)  # after the nested join: both nested paths
    assert view.visible[13] == ((0, 4), (12, 14))  # path 2: not path 1
    assert view.visible[15] == ((0, 16),)
    # Output token j scores from logit_index[j]: each path's first token from its fork token.
    assert view.logit_index[2] == 3 and view.logit_index[10] == 3  # path 1 and path 2 heads: t
    assert view.logit_index[5] == 6 and view.logit_index[6] == 6  # n1 and n2 heads: t'
    assert view.logit_index[7] == 8 and view.logit_index[12] == 13
    assert [j for j, v in enumerate(view.injected) if v] == [2, 6, 8, 10, 12]
    mask = bool_mask(view)
    assert mask.sum(dim=1).tolist() == [sum(hi - lo for lo, hi in r) for r in view.visible]
    assert not mask[9, 7] and mask[9, 6] and not mask[13, 4] and mask[15].all()
    assert additive_mask(view).shape == (1, 1, 16, 16)


def test_trace_longer_than_output_is_rejected():
    trace = {"blocks": [{"id": 0, "parent_block": None, "parent_path": None, "fork_offset": 1, "fallback": None,
                         "paths": [{"index": 1, "tokens": 5}]}]}
    with pytest.raises(ValueError):
        build_view(trace, [1], [2, 3, 4])


# -- the engine against a dense forward --------------------------------------------------


def nested_script(enc, eos: int) -> tuple[dict, list]:
    """Per-chain scripts for SparseScript, and the flattened script (forced ids, None
    for the model's choice, INJ for the engine's)."""
    schema = get_schema("parallel")

    def inj(text: str) -> list:
        return [INJ] * len(enc(text))

    def free(n: int) -> list:
        return [None] * n

    n1 = inj(schema.header(1)) + free(2) + enc("</path>")
    n2 = inj(schema.header(2)) + free(3) + enc("</path>")
    b1_pre = inj(schema.header(1)) + free(2) + enc("<parallel>")
    b1_post = inj(schema.join_header) + free(2) + enc("</summary></parallel>") + free(1) + enc("</path>")
    b2 = inj(schema.header(2)) + free(4) + enc("</path>")
    b1_flat = b1_pre + n1 + n2 + b1_post
    root_pre = free(3) + enc("<parallel>")
    root_post = inj(schema.join_header) + free(3) + enc("</summary></parallel>") + free(2)
    flat = root_pre + b1_flat + b2 + root_post

    def script(seq: list, branch: bool = True) -> list:
        # A branch's step after its close tag is left free too: its row scores the join
        # header's first token (the token it samples is dropped).
        return [None if t == INJ else t for t in seq] + free(1 if branch else 0)

    scripts = {
        "": script(root_pre + free(len(b1_flat) + len(b2)) + root_post, branch=False),
        "1": script(b1_pre + free(len(n1) + len(n2)) + b1_post),
        "2": script(b2),
        "1.1": script(n1),
        "1.2": script(n2),
    }
    return scripts, flat + [eos]


def generate_nested(llm, temperature: float) -> tuple[dict, list, list[int]]:
    """The nested-block request of `nested_script` with log-probs: (output, flat script, prompt)."""
    from tests.support.sparse_script import SparseScript

    tokenizer = llm.tokenizer_manager.tokenizer

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    scripts, flat = nested_script(enc, tokenizer.eos_token_id)
    prompt = enc("Plan two approaches, then compare them.")
    sampling = {
        "max_new_tokens": len(flat) + 8, "temperature": temperature, "sampling_seed": 11,
        "custom_params": {"npr": {"paths": 2}, "script": scripts, "eos": tokenizer.eos_token_id},
    }
    out = llm.generate(input_ids=prompt, sampling_params=sampling, return_logprob=True,
                       custom_logit_processor=SparseScript().to_str())
    return out, flat, prompt


def dense_logprobs(model_dir, view):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    ids = torch.tensor([view.input_ids])
    positions = torch.tensor([view.position_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=additive_mask(view), position_ids=positions).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out = view.input_ids[view.prompt_len:]
    values = [float(logprobs[view.logit_index[j], tok]) for j, tok in enumerate(out)]
    return values, logprobs[view.logit_index].argmax(dim=-1).tolist()


# Greedy: the sampler leaves logits in the row; sampling at temperature 1 (no top-p/k):
# probabilities. Either way an injected token is rescored from its own row.
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_logprobs_match_dense_forward_with_exported_mask(tiny, temperature):
    from tests.support.engine import assert_idle

    model_dir, llm = tiny
    out, flat, prompt = generate_nested(llm, temperature)
    output = out["output_ids"]
    assert len(output) == len(flat), "the model wrote EOS or a tag where the script left it free"
    assert all(t == f for t, f in zip(output, flat, strict=True) if isinstance(f, int)), "script not followed"
    blocks = out["meta_info"]["npr_trace"]["blocks"]
    assert [(b["depth"], b["width"], b["fallback"]) for b in blocks] == [(1, 2, None), (2, 2, None)]

    view = training_view(out, prompt)
    logprob_ids = [idx for _, idx, *_ in out["meta_info"]["output_token_logprobs"]]
    assert logprob_ids == output, "log-probs do not line up with the flattened output"
    assert view.injected == [f == INJ for f in flat]
    engine = view.logprobs
    assert all(v is not None for v in engine), "an injected token was left unscored"

    dense, argmax = dense_logprobs(model_dir, view)
    checked = [j for j, f in enumerate(flat) if not isinstance(f, int)]  # model's choice or injected
    chosen = [j for j, f in enumerate(flat) if f is None]
    greedy_picks = sum(output[j] == argmax[j] for j in chosen)
    # Greedy follows the dense argmax everywhere; sampling must have left it somewhere.
    assert greedy_picks == len(chosen) if temperature == 0 else greedy_picks < len(chosen)
    errors = [abs(engine[j] - dense[j]) for j in checked]
    worst = max(errors)
    print(f"export: {len(checked)} log-probs checked, max |engine - dense| = {worst:.3g}")
    bad = [(j, engine[j], dense[j]) for j, e in zip(checked, errors, strict=True) if e > LOGPROB_ATOL]
    assert worst <= LOGPROB_ATOL, bad
    # Tokens the script forced score 0 under the processed distribution SGLang returns.
    assert all(abs(engine[j]) < 1e-6 for j, f in enumerate(flat) if isinstance(f, int))
    # Sanity: the plain causal view (no export) disagrees on the branch tokens.
    causal = build_view({"blocks": []}, prompt, output)
    naive, _ = dense_logprobs(model_dir, causal)
    assert max(abs(engine[j] - naive[j]) for j in checked) > 100 * LOGPROB_ATOL
    assert_idle(llm)


def test_forced_block_with_budget_closes_matches_dense_forward(tiny):
    """No script at all: the engine opens the block, writes the headers, closes every
    path at its budget and writes the join header; the model writes everything else."""
    from tests.support.engine import assert_idle

    model_dir, llm = tiny
    tokenizer = llm.tokenizer_manager.tokenizer

    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    schema = get_schema("parallel")
    prompt = tokenizer.encode("Three ideas:", add_special_tokens=False)
    sampling = {"max_new_tokens": 48, "temperature": 0,
                "custom_params": {"npr": {"force": True, "paths": 3, "max_path_tokens": 9}}}
    out = llm.generate(input_ids=prompt, sampling_params=sampling, return_logprob=True)
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["width"] == 3 and all(p["finish"] == "budget" for p in block["paths"])
    view = training_view(out, prompt)
    assert [idx for _, idx, *_ in out["meta_info"]["output_token_logprobs"]] == out["output_ids"]
    expected_injected = (n_tokens(schema.forced_text(3)) + n_tokens(schema.join_header)
                         + sum(n_tokens(schema.header(i)) + n_tokens(schema.branch_close) for i in (1, 2, 3)))
    assert sum(view.injected) == expected_injected
    dense, _ = dense_logprobs(model_dir, view)
    worst = max(abs(e - d) for e, d in zip(view.logprobs, dense, strict=True))
    print(f"export (forced, budget closes): {len(dense)} log-probs, max |engine - dense| = {worst:.3g}")
    assert worst <= LOGPROB_ATOL
    assert_idle(llm)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprob_requests_write_injected_text_in_one_extend_step(tiny, temperature):
    """Log-probs at full speed: with log-probs on, a forced block's open, headers and
    join header go in one extend step each, exactly as without them (same steps, same
    tokens), and every injected token's log-prob, read from its extend row, equals the
    dense forward's; asking for top log-probs keeps one token per step (more steps)."""
    from tests.support.engine import assert_idle

    model_dir, llm = tiny
    tokenizer = llm.tokenizer_manager.tokenizer
    prompt = tokenizer.encode("Four ideas, quickly:", add_special_tokens=False)
    sampling = {"max_new_tokens": 160, "temperature": temperature, "sampling_seed": 5,
                "custom_params": {"npr": {"force": True, "paths": 4, "max_path_tokens": 7, "schema": "multiverse"}}}

    def run(**extra) -> tuple[dict, int]:
        before = assert_idle(llm)["forward_ct"]
        out = llm.generate(input_ids=prompt, sampling_params=sampling, **extra)
        return out, assert_idle(llm)["forward_ct"] - before

    scored, scored_steps = run(return_logprob=True)
    if temperature == 0:  # (sampled draws are not the same between such runs)
        plain, plain_steps = run()
        stepwise, stepwise_steps = run(return_logprob=True, top_logprobs_num=1)
        assert scored["output_ids"] == plain["output_ids"] == stepwise["output_ids"]
        assert scored_steps == plain_steps < stepwise_steps, (plain_steps, scored_steps, stepwise_steps)
    (block,) = scored["meta_info"]["npr_trace"]["blocks"]
    assert block["width"] == 4 and block["fallback"] is None
    entries = scored["meta_info"]["output_token_logprobs"]
    assert [idx for _, idx, *_ in entries] == scored["output_ids"]
    view = training_view(scored, prompt)
    assert sum(view.injected) > 8 and all(v is not None for v in view.logprobs)
    dense, _ = dense_logprobs(model_dir, view)
    worst = max(abs(e - d) for e, d in zip(view.logprobs, dense, strict=True))
    injected = [j for j, v in enumerate(view.injected) if v]
    print(f"at-once log-probs: {len(dense)} checked ({len(injected)} injected), max |engine - dense| = {worst:.3g}")
    assert worst <= LOGPROB_ATOL
    if temperature == 0:
        step_values = [v for v, *_ in stepwise["meta_info"]["output_token_logprobs"]]
        assert max(abs(a - b) for a, b in zip(view.logprobs, step_values, strict=True)) <= LOGPROB_ATOL
