"""Retraction without loss on the tiny tagged model: rebuilt KV equals the original.

An engine with SGLang's test switch SGLANG_TEST_RETRACT retracts a request every third
decode step by the same path as under memory pressure; with only a unit running, that
is a unit member, so the unit is held whole and rebuilt by prefill
(npr_engine/sched/retraction.py) over and over. Every log-prob the engine returns after
a rebuild is computed over rebuilt KV, so comparing them with one dense forward over
the exported training mask (tests/test_export.py) checks every rebuilt row: a nested
block (copies of copies), a staged join (Multiverse's tails recomputed in the parent),
aliases, positions. Greedy runs must also give the same tokens as an engine that never
retracts.
"""

from __future__ import annotations

import pytest

from npr_engine.export import training_view
from npr_engine.kv_report import idle_problems
from tests.support.engine import assert_idle, start_engine, stop_engine
from tests.test_export import INJ, LOGPROB_ATOL, dense_logprobs, generate_nested


@pytest.fixture(scope="module")
def retracting(tiny_model_dir):
    llm = start_engine(
        env={"SGLANG_TEST_RETRACT": "1"},
        model_path=str(tiny_model_dir), device="cpu", attention_backend="torch_native",
        disable_cuda_graph=True, dtype="float32", max_total_tokens=4096,
        enable_custom_logit_processor=True, random_seed=0, log_level="error",
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


def _check_against_dense(model_dir, out, prompt, checked=None) -> float:
    """max |engine - dense| over the output positions `checked` (default: all)."""
    view = training_view(out, prompt)
    assert [idx for _, idx, *_ in out["meta_info"]["output_token_logprobs"]] == out["output_ids"]
    assert all(v is not None for v in view.logprobs), "a token was left unscored"
    dense, _ = dense_logprobs(model_dir, view)
    checked = range(len(dense)) if checked is None else checked
    return max(abs(view.logprobs[j] - dense[j]) for j in checked)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nested_block_rebuilt_after_every_retraction_matches_dense_forward(tiny_model_dir, retracting, temperature):
    out, flat, prompt = generate_nested(retracting, temperature)
    assert len(out["output_ids"]) == len(flat)
    assert all(t == f for t, f in zip(out["output_ids"], flat, strict=True) if isinstance(f, int) and f != INJ)
    trace = out["meta_info"]["npr_trace"]
    assert [(b["depth"], b["fallback"]) for b in trace["blocks"]] == [(1, None), (2, None)]
    assert trace["retractions"] >= 3, trace["retractions"]
    # Tokens the script forces score 0 under the processed distribution: the others.
    checked = [j for j, f in enumerate(flat) if not isinstance(f, int)]
    worst = _check_against_dense(tiny_model_dir, out, prompt, checked)
    print(f"rebuilt nested block (T={temperature}): {trace['retractions']} retractions, "
          f"max |engine - dense| = {worst:.3g}")
    assert worst <= LOGPROB_ATOL
    assert_idle(retracting)


def test_staged_joins_rebuilt_give_the_tokens_of_an_engine_that_never_retracts(tiny, retracting):
    """Two units side by side, so that retractions go on after their joins too (a lone
    request is never retracted): their rows, staged tails included, are rebuilt."""
    model_dir, plain = tiny
    tokenizer = plain.tokenizer_manager.tokenizer
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in ("Four ideas, quickly:", "Plan a trip.")]
    sampling = {"max_new_tokens": 160, "temperature": 0,
                "custom_params": {"npr": {"force": True, "paths": 4, "max_path_tokens": 7, "schema": "multiverse"}}}
    outs = retracting.generate(input_ids=prompts, sampling_params=[sampling] * 2, return_logprob=True)
    refs = [plain.generate(input_ids=p, sampling_params=sampling, return_logprob=True) for p in prompts]
    assert sum(o["meta_info"]["npr_trace"]["retractions"] for o in outs) >= 3
    for out, ref, prompt in zip(outs, refs, prompts, strict=True):
        (block,) = out["meta_info"]["npr_trace"]["blocks"]
        assert block["staged"] and block["width"] == 4
        assert ref["meta_info"]["npr_trace"]["retractions"] == 0
        assert out["output_ids"] == ref["output_ids"]
        values = [v for v, *_ in out["meta_info"]["output_token_logprobs"]]
        expected = [v for v, *_ in ref["meta_info"]["output_token_logprobs"]]
        assert max(abs(a - b) for a, b in zip(values, expected, strict=True)) <= LOGPROB_ATOL
        assert _check_against_dense(model_dir, out, prompt) <= LOGPROB_ATOL
    assert_idle(retracting)
    assert_idle(plain)


def test_a_pause_in_retract_mode_holds_units_and_generation_continues_where_it_stopped(tiny):
    """An RL trainer's weight update: `pause_generation(mode="retract")` frees every KV;
    a unit paused inside its block is rebuilt when generation continues (with the same
    weights here: the same tokens and log-probs as a run never paused)."""
    import asyncio

    from sglang.srt.managers.io_struct import ContinueGenerationReqInput, PauseGenerationReqInput

    model_dir, llm = tiny
    tokenizer = llm.tokenizer_manager.tokenizer
    prompt = tokenizer.encode("Three ideas:", add_special_tokens=False)
    sampling = {"max_new_tokens": 200, "temperature": 0,
                "custom_params": {"npr": {"force": True, "paths": 3, "max_path_tokens": 60}}}
    ref = llm.generate(input_ids=prompt, sampling_params=sampling, return_logprob=True)
    manager = llm.tokenizer_manager

    async def kv_report() -> dict:
        return (await manager.get_internal_state())[0]["npr_kv"]

    async def paused_run():
        task = asyncio.ensure_future(llm.async_generate(input_ids=prompt, sampling_params=sampling,
                                                        return_logprob=True))
        while (await kv_report())["running"] < 3:  # its three paths decode
            await asyncio.sleep(0.02)
        await manager.pause_generation(PauseGenerationReqInput(mode="retract"))
        paused = await kv_report()
        await manager.continue_generation(ContinueGenerationReqInput())
        return await task, paused

    out, paused = llm.loop.run_until_complete(paused_run())
    assert idle_problems(paused) == [], paused  # every row and slot freed while paused
    assert out["meta_info"]["npr_trace"]["retractions"] == 1
    assert out["output_ids"] == ref["output_ids"]
    values = [v for v, *_ in out["meta_info"]["output_token_logprobs"]]
    expected = [v for v, *_ in ref["meta_info"]["output_token_logprobs"]]
    assert max(abs(a - b) for a, b in zip(values, expected, strict=True)) <= LOGPROB_ATOL
    assert_idle(llm)
