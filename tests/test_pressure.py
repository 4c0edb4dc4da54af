"""Fallbacks and retraction under scarce resources, on a second, deliberately small engine.

One module-scoped engine: a 256-token KV pool and at most 4 running requests. SGLang
admits requests by an estimate of their future tokens; a low initial estimate
(SGLANG_INIT_NEW_TOKEN_RATIO) over-admits on purpose, so decoding runs out of KV and
SGLang retracts (DESIGN.md section 4: other requests first, a unit never in part).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from npr_engine.sched.lifecycle import RETRACT_MESSAGE
from tests.support.engine import assert_idle, forced, params

KV_TOKENS = 256
MAX_RUNNING = 4


@pytest.fixture(scope="module")
def small_engine(default_model_dir):
    import sglang

    saved = os.environ.get("SGLANG_INIT_NEW_TOKEN_RATIO")
    # NOTE: read by the scheduler process at start-up; restored once it is running.
    os.environ["SGLANG_INIT_NEW_TOKEN_RATIO"] = "0.05"
    try:
        llm = sglang.Engine(
            model_path=str(default_model_dir), device="cpu", attention_backend="torch_native",
            disable_cuda_graph=True, dtype="float32", max_total_tokens=KV_TOKENS,
            max_running_requests=MAX_RUNNING, random_seed=0, log_level="error",
        )
    finally:
        if saved is None:
            del os.environ["SGLANG_INIT_NEW_TOKEN_RATIO"]
        else:
            os.environ["SGLANG_INIT_NEW_TOKEN_RATIO"] = saved
    try:
        yield llm
    finally:
        llm.shutdown()


def pool_size(engine) -> int:
    return engine.get_server_info()["internal_states"][0]["npr_kv"]["pool_size"]


def generate_all(engine, prompts: list[str], samplings: list[dict]) -> list[dict | BaseException]:
    async def go():
        tasks = [engine.async_generate(p, s) for p, s in zip(prompts, samplings, strict=True)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    return engine.loop.run_until_complete(go())


def test_fork_wider_than_max_running_requests_falls_back(small_engine):
    out = small_engine.generate("Why is the sky blue?", params(120, forced(8)))
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["fallback"] == "max_running_requests" and block["paths"] == []
    assert out["text"].startswith("<parallel>")
    assert_idle(small_engine)


def test_fork_that_free_kv_cannot_take_falls_back(small_engine):
    tokenizer = small_engine.tokenizer_manager.tokenizer
    word = tokenizer.encode(" sky", add_special_tokens=False)[0]
    # Leaves ~60 free slots at the fork; 3 paths need ~2 x 3 x (header + close + 2).
    prompt = [word] * (pool_size(small_engine) - 64)
    out = small_engine.generate(input_ids=prompt, sampling_params=params(60, forced(3)))
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["fallback"] == "kv_slots" and block["paths"] == []
    assert out["meta_info"]["completion_tokens"] <= 60
    assert_idle(small_engine)


def test_retraction_takes_plain_requests_before_a_unit(small_engine):
    n = 110  # three requests of ~120 tokens do not fit 256 slots together
    samplings = [params(n, forced(2, max_path_tokens=40), ignore_eos=True),
                 params(n, ignore_eos=True), params(n, ignore_eos=True)]
    outs = generate_all(small_engine, ["Why is the sea salty?", "Name two planets.", "List fruits:"], samplings)
    unit, *plain = outs
    assert all(isinstance(o, dict) for o in outs), outs
    assert unit["meta_info"]["finish_reason"]["type"] == "length", unit["meta_info"]
    assert unit["meta_info"]["num_retractions"] == 0
    assert unit["meta_info"]["npr_trace"]["blocks"][0]["fallback"] is None
    assert sum(o["meta_info"]["num_retractions"] for o in plain) >= 1
    assert all(o["meta_info"]["completion_tokens"] == n for o in plain)
    assert_idle(small_engine)


def test_a_unit_that_must_go_is_aborted_whole_with_a_clear_error(small_engine):
    n = 150  # two units of ~160 tokens do not fit 256 slots together
    samplings = [params(n, forced(2, max_path_tokens=60), ignore_eos=True) for _ in range(2)]
    outs = generate_all(small_engine, ["Why is the sea salty?", "Name two planets."], samplings)
    aborted = [o for o in outs if isinstance(o, BaseException) or o["meta_info"]["finish_reason"]["type"] == "abort"]
    finished = [o for o in outs if o not in aborted]
    assert len(aborted) == 1 and len(finished) == 1, outs
    assert RETRACT_MESSAGE[:40] in str(aborted[0] if isinstance(aborted[0], BaseException)
                                       else aborted[0]["meta_info"]["finish_reason"])
    assert finished[0]["meta_info"]["finish_reason"]["type"] == "length"
    assert_idle(small_engine)
    # The engine keeps serving.
    assert small_engine.generate("Hi", params(4))["meta_info"]["completion_tokens"] == 4
