"""Chunked prefill. `--enable-mixed-chunk`: decode rows ride along with prefill chunks as
one-token extends (ForwardMode.MIXED), branches and joined parents included, with their
shared positions (patches/positions.py). Without it: a request prefilled in chunks is
tracked like any other once its last chunk ran."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.engine import assert_idle, forced, params

PROMPT = "Explain why the sky is blue."
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens: 7 chunks of 64


@pytest.fixture(scope="module")
def mixed(default_model_dir):
    from tests.support.engine import start_engine, stop_engine

    llm = start_engine(
        model_path=str(default_model_dir), device="cpu", attention_backend="torch_native",
        disable_cuda_graph=True, dtype="float32", max_total_tokens=8192, random_seed=0, log_level="error",
        enable_mixed_chunk=True, chunked_prefill_size=64,
        # NOTE: in-process settings are global: keep the session engine's (scripted tests).
        enable_custom_logit_processor=True,
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


def _shifted(llm) -> dict:
    return llm.get_server_info()["internal_states"][0]["npr_positions_shifted"]


def test_blocks_decoded_in_mixed_batches_match_a_run_alone(mixed):
    request = params(60, forced(3, max_path_tokens=12))
    alone = mixed.generate(PROMPT, request)  # nothing to mix with
    before = _shifted(mixed).get("mixed", 0)

    async def together():
        async def later(delay: float, i: int):
            await asyncio.sleep(delay)
            return await mixed.async_generate(f"{i}. {LONG}", params(4))

        return await asyncio.gather(mixed.async_generate(PROMPT, request),
                                    *(later(0.2 * i, i) for i in range(6)))

    block, *plain = mixed.loop.run_until_complete(together())
    assert block["text"] == alone["text"]
    assert block["meta_info"]["npr_trace"]["blocks"] == alone["meta_info"]["npr_trace"]["blocks"]
    # Rows with shifted positions (branches, joined parents) went through MIXED steps.
    assert _shifted(mixed).get("mixed", 0) > before
    assert all(p["meta_info"]["completion_tokens"] == 4 for p in plain)
    assert_idle(mixed)


@pytest.fixture(scope="module")
def chunked(tiny_model_dir):
    """The tiny tagged model, prefill in chunks of 64, no mixed chunks."""
    from tests.support.engine import start_engine, stop_engine

    llm = start_engine(
        model_path=str(tiny_model_dir), device="cpu", attention_backend="torch_native", disable_cuda_graph=True,
        dtype="float32", max_total_tokens=4096, chunked_prefill_size=64, random_seed=0, log_level="error",
        # NOTE: in-process settings are global: keep the session engine's (scripted tests).
        enable_custom_logit_processor=True,
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


def test_a_request_whose_prefill_was_chunked_keeps_its_block(chunked):
    """A request prefilled in chunks beside a short one, the engine's first: the short
    one's batch (less the chunked request) becomes the running batch, and SGLang leaves
    that batch's `chunked_req` pointing at the long request after its last chunk. Its
    decode steps must still commit in our eyes: with log-probs and top-k (tags injected
    one per step) its forced block was lost (only the first tag token written) before
    the fix, as on an H200 with 1.3k-token prompts and SGLang's own chunk size."""
    ids = list(range(1000, 1150))  # 150 prompt tokens: chunks of 64, 64, 22
    request = params(60, forced(2, max_path_tokens=12), ignore_eos=True)
    asks = {"return_logprob": True, "top_logprobs_num": 1}
    short, long = chunked.generate(input_ids=[list(range(2000, 2030)), ids], sampling_params=[params(20), request],
                                   **asks)  # (first: the engine's running batch is still its first empty one)
    alone = chunked.generate(input_ids=ids, sampling_params=request, **asks)
    assert [(b["width"], b["fallback"]) for b in alone["meta_info"]["npr_trace"]["blocks"]] == [(2, None)]
    assert long["output_ids"] == alone["output_ids"]
    assert long["meta_info"]["npr_trace"]["blocks"] == alone["meta_info"]["npr_trace"]["blocks"]
    assert short["meta_info"]["completion_tokens"] == 20
    assert_idle(chunked)
